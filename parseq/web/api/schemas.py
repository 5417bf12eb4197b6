"""Request bodies of the REST API: one table of fields, used both to validate requests and to
write the OpenAPI document, so the two cannot drift apart.

Each field has a JSON Schema (for the document) and a check (for requests) that returns the
clean value or raises a :class:`ParseqError` whose message becomes that field's error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app

from parseq.core.argv import (
    ARG_NAME_RE,
    RESERVED_ENV,
    SECRET_NAME_RE,
    check_positional,
    validate_secret_name,
)
from parseq.core.config import Config
from parseq.core.errors import BadRequest, Conflict, ParseqError, ValidationError
from parseq.db.models import (
    NAME_RE,
    NotebookEngine,
    OverlapPolicy,
    Parser,
    ParserKind,
    ScheduleType,
    db,
)
from parseq.envs import requirements as reqs
from parseq.notebooks.validate import check_parser_notebook
from parseq.services import code_store, notify_settings, runs
from parseq.services.registry import validate_name, validate_path
from parseq.services.schedules import Schedule, validate_schedule

#: Longest timeout or schedule interval accepted: ten years, in seconds.
MAX_SECONDS = 10 * 365 * 24 * 3600


@dataclass(frozen=True)
class Field:
    schema: dict[str, Any]
    check: Callable[[Any], Any]


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError("must be a string")
    return value


def _kind(value: Any) -> ParserKind:
    try:
        return ParserKind(value)
    except ValueError:
        raise ValidationError("must be 'script' or 'notebook'") from None


def _engine(value: Any) -> NotebookEngine:
    try:
        return NotebookEngine(value)
    except ValueError:
        raise ValidationError("must be 'fast' or 'kernel'") from None


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("path is required")
    return value  # checked against its root once the kind is known


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= MAX_SECONDS  # also refuses NaN and Infinity (json accepts both)
    ):
        raise ValidationError(
            f"must be a number of seconds > 0 and <= {MAX_SECONDS}, or null for the default"
        )
    return float(value)


SCHEDULE_KEYS = {
    # API name -> (JSON Schema, ``validate_schedule`` argument)
    "type": ({"type": ["string", "null"], "enum": [t.value for t in ScheduleType] + [None]}, ""),
    "cron": ({"type": ["string", "null"], "example": "*/15 * * * *"}, "cron"),
    "interval_s": ({"type": ["integer", "string", "null"], "example": "15m"}, "interval_s"),
    "run_at": ({"type": ["string", "null"], "format": "date-time"}, "run_at"),
    "start_at": ({"type": ["string", "null"], "format": "date-time"}, "schedule_start_at"),
    "end_at": ({"type": ["string", "null"], "format": "date-time"}, "schedule_end_at"),
    "timezone": ({"type": ["string", "null"], "example": "Europe/Moscow"}, "timezone"),
    "overlap": (
        {"type": ["string", "null"], "enum": [p.value for p in OverlapPolicy] + [None]},
        "overlap",
    ),
}


def _schedule(value: Any) -> Schedule:
    """The ``schedule`` object as ``Parser.to_dict`` shows it; null removes the schedule.
    Checked by :func:`parseq.services.schedules.validate_schedule`, as the admin form is."""
    if value is None:
        return Schedule(None)
    if not isinstance(value, dict):
        raise ValidationError("must be an object (type, cron, interval_s, run_at, ...) or null")
    unknown = set(value) - set(SCHEDULE_KEYS)
    if unknown:
        raise ValidationError(f"unknown schedule field(s): {', '.join(sorted(unknown))}")
    for key, item in value.items():
        if key == "interval_s" and isinstance(item, (int, float)) and not isinstance(item, bool):
            if not 0 < item <= MAX_SECONDS:
                raise ValidationError(f"interval_s must be > 0 and <= {MAX_SECONDS} seconds")
        elif item is not None and not isinstance(item, str):
            raise ValidationError(f"{key} must be a string or null")
    kwargs = {SCHEDULE_KEYS[k][1]: v for k, v in value.items() if k != "type"}
    try:
        schedule = validate_schedule(value.get("type"), **kwargs)
    except ValidationError as exc:
        raise ValidationError(f"{exc.field}: {exc.message}" if exc.field else exc.message) from None
    if schedule.interval_s is not None and schedule.interval_s > MAX_SECONDS:
        raise ValidationError(f"interval_s must be <= {MAX_SECONDS} seconds")
    return schedule


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValidationError("must be an integer from 0 to 100")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError("must be true or false")
    return value


def _secrets(value: Any) -> dict[str, str | None]:
    if not isinstance(value, dict):
        raise ValidationError("must be an object of secret name -> value")
    for name, secret in value.items():
        validate_secret_name(name)
        if secret is not None and not isinstance(secret, str):
            raise ValidationError(f"secret {name!r} must be a string (or null to remove it)")
    return value


def _args(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError("must be a JSON object")
    return runs.check_args(value)


#: A JSON list of positional arguments: strings as they are, numbers as JSON.
POSITIONAL_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": ["string", "number", "boolean"]},
}

PARSER_FIELDS: dict[str, Field] = {
    "name": Field(
        {"type": "string", "pattern": NAME_RE.pattern, "example": "quotes"}, validate_name
    ),
    "description": Field({"type": "string"}, _string),
    "kind": Field({"type": "string", "enum": [k.value for k in ParserKind]}, _kind),
    "path": Field(
        {
            "type": "string",
            "description": "relative to parsers/ (.py) or notebooks/ (.ipynb)",
            "example": "quotes.py",
        },
        _path,
    ),
    "requirements": Field({"type": "string", "description": "pip requirement lines"}, _string),
    "engine": Field(
        {
            "type": "string",
            "enum": [e.value for e in NotebookEngine],
            "description": "notebooks: fast (no kernel, the default) or kernel (Jupyter "
            "kernel through nbclient; ipykernel and nbclient join the requirements)",
        },
        _engine,
    ),
    "default_args": Field(
        {"type": "object", "propertyNames": {"pattern": ARG_NAME_RE.pattern}}, _args
    ),
    "default_positional": Field(POSITIONAL_SCHEMA, check_positional),
    "secrets": Field(
        {
            "type": "object",
            "writeOnly": True,
            "description": "secret name -> value; write-only. On update, merged into the "
            "stored secrets; null removes one",
            "propertyNames": {
                "pattern": SECRET_NAME_RE.pattern,
                "not": {"enum": sorted(RESERVED_ENV)},
            },
            "additionalProperties": {"type": ["string", "null"]},
        },
        _secrets,
    ),
    "timeout_s": Field(
        {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_SECONDS}, _timeout
    ),
    "max_retries": Field({"type": "integer", "minimum": 0, "maximum": 100}, _retries),
    "enabled": Field({"type": "boolean"}, _bool),
    "schedule": Field(
        {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {k: schema for k, (schema, _arg) in SCHEDULE_KEYS.items()},
                    "description": "replaces the whole schedule; type picks cron, interval_s "
                    "(seconds or 15m, 2h...) or run_at; naive times are read in timezone",
                },
                {"type": "null", "description": "no schedule: runs by hand or over the API"},
            ]
        },
        _schedule,
    ),
}
PARSER_FIELDS["notifications"] = Field(
    {
        "type": "object",
        "additionalProperties": False,
        "description": "merged into the parser's settings; a missing or null key = the "
        "PARSEQ_NOTIFY_* default. Shown with the webhook by host and the secret as set or not",
        "properties": {
            "events": {"type": ["array", "null"], "items": {"enum": list(notify_settings.EVENTS)}},
            "webhook_url": {"type": ["string", "null"], "format": "uri", "writeOnly": True},
            "webhook_secret": {"type": ["string", "null"], "writeOnly": True},
            "webhook_format": {
                "type": ["string", "null"],
                "enum": [*notify_settings.FORMATS, None],
            },
            "email_to": {"type": ["array", "null"], "items": {"type": "string", "format": "email"}},
            "slow_after_s": {"type": ["number", "null"], "minimum": 0},
            "email_digest_s": {"type": ["number", "null"], "minimum": 0},
        },
    },
    notify_settings.check_settings,
)
REQUIRED_ON_CREATE = ("name", "path")


def parser_body_schema(create: bool) -> dict[str, Any]:
    """The JSON Schema of a create (``POST``) or update (``PATCH``) body."""
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: f.schema for name, f in PARSER_FIELDS.items()},
    }
    if create:
        schema["required"] = list(REQUIRED_ON_CREATE)
    return schema


def check_parser_body(
    body: Mapping[str, Any], config: Config, existing: Parser | None
) -> dict[str, Any]:
    """Validate a create (``existing`` None) or partial update body; return clean values.

    Unknown fields are a 400; every bad value is reported at once, by field, in a 422.
    """
    unknown = set(body) - set(PARSER_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s) in body: {', '.join(sorted(unknown))}")
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, value in body.items():
        try:
            values[name] = PARSER_FIELDS[name].check(value)
        except ParseqError as exc:
            errors[name] = exc.message
    if existing is None:
        for name in REQUIRED_ON_CREATE:
            if name not in body:
                errors[name] = f"{name} is required"
    kind = values.get("kind", existing.kind if existing else ParserKind.SCRIPT)
    path = values.get("path")
    if path is None and "kind" in values and existing is not None and "path" not in errors:
        path = existing.path  # a new kind must still fit the stored path
    if path is not None:
        try:
            values["path"] = validate_path(config, kind, path)
            if kind is ParserKind.NOTEBOOK:
                check_parser_notebook(config, values["path"])  # valid nbformat 4, Python
        except ParseqError as exc:
            errors["path"] = exc.message
    if "requirements" in values and "requirements" not in errors:
        try:  # the same policy the worker applies when it builds the env
            reqs.parse(values["requirements"] or "", reqs.Policy.from_config(config))
        except ParseqError as exc:
            errors["requirements"] = exc.message
    if errors:
        summary = "; ".join(f"{k}: {v}" for k, v in errors.items())
        raise ValidationError(f"invalid parser: {summary}", field=next(iter(errors)), fields=errors)
    return values


def apply_parser_values(parser: Parser, values: Mapping[str, Any]) -> Parser:
    """Set validated values on a parser (new or existing) and commit; 409 on a taken name."""
    if "name" in values and values["name"] != parser.name:
        taken = db.session.execute(db.select(Parser.id).filter_by(name=values["name"])).first()
        if taken:
            raise Conflict(f"a parser named {values['name']!r} exists already", field="name")
    for name, value in values.items():
        if name == "schedule":
            value.apply(parser)
        elif name == "notifications":
            parser.notifications = notify_settings.merged(parser.notifications, value)
        elif name == "secrets":
            # Assign a new dict as a whole: encryption may sit behind this attribute.
            merged = {**(parser.secrets or {}), **value}
            parser.secrets = {k: v for k, v in merged.items() if v is not None}
        else:
            setattr(parser, name, value)
    db.session.add(parser)
    state = current_app.extensions["parseq"]
    code_store.refresh(state.config, state.storage, parser)  # a changed file or requirements
    db.session.commit()
    return parser
