"""The parser form of the admin: its fields, their checks, and what it shows of a parser when
it opens (choices of scripts, secrets to remove, datetimes in the parser's timezone)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app, request
from wtforms import SelectChoice, fields
from wtforms import ValidationError as FormValidationError
from wtforms.validators import Optional

from parseq.core.errors import ParseqError
from parseq.db.models import NotebookEngine, Parser, db
from parseq.envs import requirements as reqs
from parseq.services import registry
from parseq.web.admin import admin_notify
from parseq.web.admin import code as admin_code
from parseq.web.admin.admin_forms import (
    RUN_POLICY_FORM_ARGS,
    RUN_POLICY_OVERRIDES,
    JSONListField,
    JSONObjectField,
    RemoveSecretsField,
    ScriptField,
    SecretsField,
    UploadField,
    parse_secrets,
    script_choices,
)
from parseq.web.admin.admin_schedule import (
    SCHEDULE_DATETIMES,
    SCHEDULE_FORM_ARGS,
    SCHEDULE_FORM_OVERRIDES,
)

#: Retries and sandbox limits: shown on the detail page and edited in the form alike.
RUN_POLICY_FIELDS = (
    "max_retries",
    "retry_on_timeout",
    "max_memory_bytes",
    "max_cpu_s",
    "max_processes",
    "max_file_bytes",
    "max_open_files",
)


class ParserFormMixin:
    """The form half of the admin's parser view (Flask-Admin ``ModelView`` settings and
    hooks); the view itself lists, shows and saves."""

    form_columns = (
        "name",
        "description",
        "script",
        "upload",
        "code_edit",
        "engine",
        "requirements",
        "default_args",
        "default_positional",
        "secrets_set",
        "secrets_remove",
        "timeout_s",
        *RUN_POLICY_FIELDS,
        "enabled",
        "schedule_type",
        "cron",
        "interval_s",
        "run_at",
        "schedule_start_at",
        "schedule_end_at",
        "timezone",
        "overlap",
        *admin_notify.FORM_FIELDS,
    )
    form_extra_fields = {
        **admin_notify.FORM_FIELDS,
        "script": ScriptField("Script or notebook", choices=[], validate_choice=True),
        "upload": UploadField("…or upload a .py / .ipynb, or a folder as .zip / .tar.gz"),
        **admin_code.form_fields(),
        "secrets_set": SecretsField(
            "Set secrets",
            description="One NAME=value per line; adds or replaces. Values are never shown.",
        ),
        "secrets_remove": RemoveSecretsField("Remove secrets", choices=[]),
    }
    form_overrides = {
        "default_args": JSONObjectField,
        "default_positional": JSONListField,
        **RUN_POLICY_OVERRIDES,
        "engine": fields.SelectField,
        **SCHEDULE_FORM_OVERRIDES,
    }
    form_args = {
        "engine": {
            "validators": [Optional()],  # absent (a script's form): fast
            "choices": [SelectChoice(e.value) for e in NotebookEngine],
            "coerce": lambda v: getattr(v, "value", v) or NotebookEngine.FAST.value,
            "label": "Notebook engine",
            "description": "fast: no kernel, milliseconds to start; kernel: a Jupyter kernel "
            "(seconds to start) when a notebook needs what only IPython does",
        },
        **RUN_POLICY_FORM_ARGS,
        **SCHEDULE_FORM_ARGS,
    }
    form_widget_args = {
        "description": {"rows": 2},
        "requirements": {"rows": 3},
        "secrets_remove": {"class": "list-unstyled mb-0"},
    }

    def scaffold_form(self) -> type:
        base = super().scaffold_form()

        class ParserForm(base):  # type: ignore[misc, valid-type]
            def validate_name(self, field: fields.Field) -> None:
                try:
                    registry.validate_name(field.data)
                except ParseqError as exc:
                    raise FormValidationError(exc.message) from None
                query = db.select(Parser.id).filter_by(name=field.data)
                if self._obj is not None:
                    query = query.where(Parser.id != self._obj.id)
                if db.session.execute(query).first():
                    raise FormValidationError(f"a parser named {field.data!r} exists")

            def validate_script(self, field: fields.Field) -> None:
                if not field.data and admin_code.uploaded(self) is None:
                    raise FormValidationError("choose a script or notebook, or upload one")

            def validate_requirements(self, field: fields.Field) -> None:
                config = current_app.extensions["parseq"].config
                try:
                    reqs.parse(field.data or "", reqs.Policy.from_config(config))
                except ParseqError as exc:
                    raise FormValidationError(exc.message) from None

            def validate_secrets_set(self, field: fields.Field) -> None:
                parse_secrets(field.data or "")

        return ParserForm

    def _prepare(self, form: Any, parser: Parser | None) -> Any:
        form.script.choices = script_choices()
        current = parser and parser.path and f"{parser.kind.value}:{parser.path}"
        if current and current not in {choice.value for choice in form.script.choices}:
            form.script.choices.append(SelectChoice(current, f"{parser.path} (current)"))
        names = sorted((parser and parser.secrets) or {})
        if names:
            form.secrets_remove.choices = [SelectChoice(n) for n in names]
        else:
            del form["secrets_remove"]  # nothing to remove: no empty box on the page
        if parser is not None and request.method == "GET":
            form.script.data = f"{parser.kind.value}:{parser.path}"
        admin_code.prepare(form, parser, request.method == "GET")
        return form

    def create_form(self, obj: Any = None) -> Any:
        return self._prepare(super().create_form(obj), None)

    def edit_form(self, obj: Any = None) -> Any:
        return self._prepare(super().edit_form(obj), obj)

    def on_form_prefill(self, form: Any, id: Any) -> None:
        """Show stored (UTC) schedule datetimes in the parser's timezone, as they are entered."""
        model = self.get_one(id)
        admin_notify.prefill(form, model)
        try:
            tz = ZoneInfo(model.timezone or "UTC")
        except (KeyError, ValueError):
            return
        for name in SCHEDULE_DATETIMES:
            value = getattr(model, name)
            if value is not None:
                form[name].data = value.astimezone(tz).replace(tzinfo=None)
