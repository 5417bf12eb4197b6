"""The admin page of API tokens: create one (its value is shown once, in a message), revoke it.

Kept out of ``admin.py`` so the admin can change shape without touching token logic.
"""

from __future__ import annotations

from typing import Any

from flask import flash
from flask_admin.contrib.sqla import ModelView
from flask_admin.form import BaseForm
from markupsafe import Markup
from wtforms import BooleanField, StringField
from wtforms import ValidationError as FormValidationError
from wtforms.validators import DataRequired

from parseq.db.models import NAME_RE, db
from parseq.db.tokens import ApiToken
from parseq.services.tokens import hash_token, new_token
from parseq.web.admin import auth


class CreateTokenForm(BaseForm):
    name = StringField("Name", validators=[DataRequired()])
    read_only = BooleanField("Read-only (GET requests only)")


class EditTokenForm(BaseForm):
    revoked = BooleanField("Revoked")


class TokenView(auth.LoginRequired, ModelView):
    """API tokens: name, read-only, created, last used, revoked. Values are never listed."""

    can_delete = False  # revoke instead: the row keeps the token's history
    column_list = ("name", "read_only", "revoked", "created_at", "last_used_at")
    column_default_sort = ("id", True)

    def get_create_form(self) -> type[BaseForm]:
        return CreateTokenForm

    def get_edit_form(self) -> type[BaseForm]:
        return EditTokenForm

    def on_model_change(self, form: Any, model: ApiToken, is_created: bool) -> None:
        if not is_created:
            return
        if not NAME_RE.match(model.name or ""):
            raise FormValidationError("name must be 1-64 lowercase letters, digits, _ or -")
        with db.session.no_autoflush:  # the new row is in the session, still half filled
            taken = db.session.execute(
                db.select(ApiToken.id).where(ApiToken.name == model.name)
            ).first()
        if taken:
            raise FormValidationError(f"a token named {model.name!r} exists already")
        model._plain = new_token()  # shown once by after_model_change, never stored
        model.token_hash = hash_token(model._plain)
        model.revoked = False

    def after_model_change(self, form: Any, model: ApiToken, is_created: bool) -> None:
        plain = getattr(model, "_plain", None)
        if is_created and plain:
            flash(
                Markup(
                    "Token <b>{}</b> created. Copy it now, it is not shown again: <code>{}</code>"
                ).format(model.name, plain),
                "success",
            )


def add_view(admin: Any) -> None:
    admin.add_view(TokenView(ApiToken, db, name="API tokens", endpoint="tokens"))
