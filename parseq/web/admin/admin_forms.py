"""The admin's own form fields: script choice, upload, write-only secrets, JSON arguments.

They check input with the same rules as the REST API (:mod:`parseq.services.runs`,
:mod:`parseq.sandbox.runner`)
and answer bad input with a form error, never an exception page.
"""

from __future__ import annotations

import json
from typing import Any

from flask import current_app
from flask_wtf import FlaskForm
from wtforms import SelectChoice, fields, widgets
from wtforms import ValidationError as FormValidationError

from parseq.core import argv
from parseq.core.errors import ParseqError
from parseq.services import registry, runs


class Unbound:
    """A form field that is not a model column: ``populate_obj`` leaves the model alone."""

    def populate_obj(self, obj: Any, name: str) -> None:
        pass


class ScriptField(Unbound, fields.SelectField):
    pass


class UploadField(Unbound, fields.FileField):
    pass


class SecretsField(Unbound, fields.TextAreaField):
    """``NAME=value`` lines. Always rendered empty: secret values never go back to a browser."""

    def _value(self) -> str:
        return ""


class RemoveSecretsField(Unbound, fields.SelectMultipleField):
    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


class JSONObjectField(fields.TextAreaField):
    """A JSON object of run arguments, checked with the same rules as the API's."""

    def _value(self) -> str:
        if self.raw_data:
            return self.raw_data[0]
        return json.dumps(self.data or {}, indent=2)

    def process_formdata(self, valuelist: list[Any]) -> None:
        raw = (valuelist[0] if valuelist else "").strip() or "{}"
        try:
            value = json.loads(raw)
        except ValueError as exc:
            self.data = None
            raise ValueError(f"not valid JSON: {exc}") from None
        try:
            self.data = runs.check_args(value)
        except ParseqError as exc:
            self.data = None
            raise ValueError(exc.message) from None


class JSONListField(fields.TextAreaField):
    """A JSON list of positional arguments, checked with the same rules as the API's."""

    def _value(self) -> str:
        if self.raw_data:
            return self.raw_data[0]
        return json.dumps(self.data or [])

    def process_formdata(self, valuelist: list[Any]) -> None:
        raw = (valuelist[0] if valuelist else "").strip() or "[]"
        try:
            self.data = argv.check_positional(json.loads(raw))
        except ValueError as exc:
            self.data = None
            raise ValueError(f"not valid JSON: {exc}") from None
        except ParseqError as exc:
            self.data = None
            raise ValueError(exc.message) from None


def parse_secrets(text: str) -> dict[str, str]:
    """``NAME=value`` lines (blank lines ignored) -> dict; names checked like the runner does."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise FormValidationError(f"line {number}: expected NAME=value")
        try:
            found[argv.validate_secret_name(name.strip())] = value
        except ParseqError as exc:
            raise FormValidationError(f"line {number}: {exc.message}") from None
    return found


def script_choices() -> list[SelectChoice]:
    config = current_app.extensions["parseq"].config
    choices = [SelectChoice("", "(upload a file below)")]
    for kind, rel in registry.list_files(config):
        root = registry.root_for(config, kind).name
        choices.append(SelectChoice(f"{kind.value}:{rel}", f"{root}/{rel}"))
    return choices


class RunNowForm(FlaskForm):
    args = JSONObjectField("Arguments (JSON object, overlaid on the default args)")
    positional = JSONListField("Positional arguments (JSON list, after the options)")
