"""Admin login: users with hashed passwords, Flask-Login sessions, CSRF on every form.

CSRF is Flask-WTF's ``CSRFProtect`` over the whole app (the REST API, authenticated by bearer
tokens rather than cookies, is exempt). Flask-Admin's templates add its token to every form they
render, including list actions and delete buttons, so no admin POST gets through without one.
Flask-Admin's own ``SecureForm`` is not used: its token has the same field name and would be
refused by ``CSRFProtect``.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, flash, redirect, request, url_for
from flask_admin import BaseView, expose
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers import Response
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from parseq.errors import Conflict, NotFound, ValidationError
from parseq.models import NAME_RE, User, db, utcnow

MIN_PASSWORD_LENGTH = 8
DEFAULT_ADMIN = "admin"

csrf = CSRFProtect()
login_manager = LoginManager()


def init_app(app: Flask) -> None:
    """Sessions and CSRF for the admin; call after the API blueprint is registered."""
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid for the session, not an hour
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    csrf.init_app(app)
    if "api" in app.blueprints:
        csrf.exempt(app.blueprints["api"])
    login_manager.init_app(app)
    login_manager.login_view = "login.index"


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    user = db.session.get(User, int(user_id)) if user_id.isdigit() else None
    return user if user is not None and user.active else None


def create_user(username: str, password: str) -> User:
    """Add a user; the password is stored only as a salted hash."""
    if not NAME_RE.match(username or ""):
        raise ValidationError(
            "username must be 1-64 lowercase letters, digits, _ or -", field="username"
        )
    _check_password(password)
    if db.session.execute(db.select(User.id).filter_by(username=username)).first():
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=generate_password_hash(password))
    db.session.add(user)
    db.session.commit()
    return user


def set_password(username: str, password: str) -> User:
    user = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user named {username!r}")
    _check_password(password)
    user.password_hash = generate_password_hash(password)
    db.session.commit()
    return user


def _check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters", field="password"
        )


def authenticate(username: str, password: str) -> User | None:
    """The active user with this name and password, or None."""
    user = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
    # Hash even for unknown names so response time does not reveal which names exist.
    hashed = user.password_hash if user else generate_password_hash("x")
    if check_password_hash(hashed, password) and user is not None and user.active:
        return user
    return None


def ensure_admin(password: str = "") -> str | None:  # nosec B107  # "" = make a random one
    """Create the ``admin`` user when there are no users at all (first start of ``parseq up``).

    Returns the password when it was generated here, so the caller can print it once.
    """
    if db.session.execute(db.select(User.id).limit(1)).first() is not None:
        return None
    generated = not password
    password = password or secrets.token_urlsafe(12)
    create_user(DEFAULT_ADMIN, password)
    return password if generated else None


class LoginRequired:
    """Mixin for Flask-Admin views: only logged-in users see them (and their menu entries)."""

    def is_accessible(self) -> bool:
        return bool(current_user.is_authenticated)

    def inaccessible_callback(self, name: str, **kwargs: Any) -> Response:
        return redirect(url_for("login.index", next=request.full_path.rstrip("?")))


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


def _safe_next(target: str | None) -> str:
    """Only same-site paths, so the login page cannot redirect to another site."""
    parts = urlsplit(target or "")
    # Browsers read "/\\host" as "//host", another site.
    if (
        target
        and not parts.scheme
        and not parts.netloc
        and target.startswith("/")
        and ("\\" not in target)
    ):
        return target
    return url_for("admin.index")


class LoginView(BaseView):
    """``/admin/login/`` and ``/admin/login/logout``; not in the menu."""

    def is_visible(self) -> bool:
        return False

    @expose("/", methods=("GET", "POST"))
    def index(self) -> Any:
        form = LoginForm()
        if form.validate_on_submit():
            user = authenticate(form.username.data or "", form.password.data or "")
            if user is not None:
                login_user(user)
                user.last_login_at = utcnow()
                db.session.commit()
                return redirect(_safe_next(request.args.get("next")))
            flash("Wrong username or password.", "error")
        return self.render("parseq/login.html", form=form)

    @expose("/logout", methods=("POST",))
    def logout(self) -> Response:
        logout_user()
        return redirect(url_for("login.index"))
