"""Admin login: users with hashed passwords, Flask-Login sessions, CSRF on every form.

A login is good only while its server-side session lives (:mod:`parseq.services.sessions`): logout,
"log out everywhere" and a password change end it, whatever cookie a browser kept. Failed
logins are throttled per username and per client address (:mod:`parseq.web.throttle`). Every
redirect target a request names (``next`` at login, ``url`` in the admin) must be a path on
this site (:func:`safe_path`).

CSRF is Flask-WTF's ``CSRFProtect`` over the whole app (the REST API, authenticated by bearer
tokens rather than cookies, is exempt). Flask-Admin's templates add its token to every form they
render, including list actions and delete buttons, so no admin POST gets through without one.
Flask-Admin's own ``SecureForm`` is not used: its token has the same field name and would be
refused by ``CSRFProtect``.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, flash, redirect, request, session, url_for
from flask_admin import BaseView, expose
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.urls import iri_to_uri
from werkzeug.wrappers import Response
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from parseq.core.errors import Conflict, NotFound, TooManyRequests, ValidationError
from parseq.db.models import NAME_RE, User, db, utcnow
from parseq.services import sessions
from parseq.web import throttle

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 8
DEFAULT_ADMIN = "admin"
#: Where the Flask session keeps the id of its server-side session.
SESSION_KEY = "_parseq_sid"
#: Characters a browser drops or reads as a slash anywhere in a URL, so a target holding
#: them may lead somewhere else than it looks: controls (tab, CR, LF), DEL and backslash.
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")

csrf = CSRFProtect()
login_manager = LoginManager()


def init_app(app: Flask) -> None:
    """Sessions and CSRF for the admin; call after the API blueprint is registered."""
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid for the session, not an hour
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    csrf.init_app(app)
    for name in ("api", "api_code"):  # bearer tokens, not cookies: no CSRF to guard against
        if name in app.blueprints:
            csrf.exempt(app.blueprints[name])
    login_manager.init_app(app)
    login_manager.login_view = "login.index"
    throttle.init_app(app)
    app.before_request(_refuse_offsite_return_url)


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    """The session's user, while its server-side session lives (not logged out or expired)."""
    user = db.session.get(User, int(user_id)) if user_id.isdigit() else None
    if user is None or not user.active:
        return None
    config = current_app.extensions["parseq"].config
    return user if sessions.is_live(session.get(SESSION_KEY), user.id, config) else None


def safe_path(target: str | None) -> str | None:
    """``target`` when it is a path on this site (one leading ``/``, no scheme, host,
    backslash or control character, also as the ``Location`` header will spell it), else None.
    """
    if not target or _UNSAFE_URL_CHARS.search(target) or not _one_leading_slash(target):
        return None
    try:
        location = iri_to_uri(target)  # what werkzeug's redirect() will send
        if not _one_leading_slash(location):
            return None
        if any(urlsplit(url)[:2] != ("", "") for url in (target, location)):
            return None  # a scheme or a host
    except ValueError:  # e.g. "//[x": not even a URL
        return None
    return target


def _one_leading_slash(url: str) -> bool:
    return url.startswith("/") and not url.startswith("//")


def _refuse_offsite_return_url() -> None:
    """Flask-Admin redirects to its ``url`` parameter after a save, delete or action; refuse
    a request whose ``url`` leads off the site (400) before any view reads it."""
    url = request.values.get("url") if request.path.startswith("/admin/") else None
    if url and safe_path(url) is None:
        abort(400, "the url parameter must be a path on this site")


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
    sessions.end_all(user.id)  # whoever knew the old password is logged out
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


def check_login(username: str, password: str, address: str) -> User:
    """The user whose name and password these are, for a login from ``address``.

    Raises :class:`TooManyRequests` while the username or the address has too many recent
    failures (whether or not the user exists, so the answer reveals nothing), and
    :class:`ValidationError` for a wrong username or password; both are logged.
    """
    keys = (throttle.key("login-user", username), throttle.key("login-address", address))
    limiter = throttle.current()
    try:
        limiter.check(*keys)
    except TooManyRequests:
        log.warning("admin login refused (too many failures): user %r from %s", username, address)
        raise
    user = authenticate(username, password)
    if user is None:
        limiter.fail(*keys)
        log.warning("failed admin login: user %r from %s", username, address)
        raise ValidationError("Wrong username or password.")
    return user


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


class LoginView(BaseView):
    """``/admin/login/``, ``/admin/login/logout`` and ``/admin/login/logout-everywhere``; not
    in the menu."""

    def is_visible(self) -> bool:
        return False

    @expose("/", methods=("GET", "POST"))
    def index(self) -> Any:
        form = LoginForm()
        if not form.validate_on_submit():
            return self.render("parseq/login.html", form=form)
        address = request.remote_addr or "unknown"
        try:
            user = check_login(form.username.data or "", form.password.data or "", address)
        except TooManyRequests as exc:
            flash(exc.message, "error")
            headers = {"Retry-After": str(exc.retry_after_s)}
            return self.render("parseq/login.html", form=form), 429, headers
        except ValidationError as exc:
            flash(exc.message, "error")
            return self.render("parseq/login.html", form=form)
        target = safe_path(request.args.get("next")) or url_for("admin.index")
        session.clear()  # nothing from before the login carries over (session fixation)
        login_user(user)
        session[SESSION_KEY] = sessions.start(user.id, current_app.extensions["parseq"].config)
        user.last_login_at = utcnow()
        db.session.commit()
        return redirect(target)

    @expose("/logout", methods=("POST",))
    def logout(self) -> Response:
        """End this browser's session, on the server too (a copied cookie stops working)."""
        sessions.end(session.get(SESSION_KEY))
        logout_user()
        session.clear()
        return redirect(url_for("login.index"))

    @expose("/logout-everywhere", methods=("POST",))
    @login_required
    def logout_everywhere(self) -> Response:
        """End every session of this user, in every browser."""
        ended = sessions.end_all(int(current_user.get_id()))
        logout_user()
        session.clear()
        flash(f"Logged out of {ended} session(s).", "success")
        return redirect(url_for("login.index"))
