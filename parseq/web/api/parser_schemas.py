"""Schemas of parsers: the create/update bodies and the parser as the API shows it.

Every field the admin's parser form sets is here, validated by the same service functions
(``services.parser_rules``, ``services.schedules.validate_schedule``,
``services.notify_settings.check_settings``, ``services.registry.validate_name``...) with
their messages; the document shows the bounds from the same constants.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields

from parseq.core.argv import (
    RESERVED_ENV,
    SECRET_NAME_RE,
    check_positional,
    validate_secret_name,
)
from parseq.core.errors import ParseqError
from parseq.db.models import NAME_RE, NotebookEngine, OverlapPolicy, ParserKind, ScheduleType
from parseq.services import notify_settings, parser_rules, runs
from parseq.services.registry import validate_name
from parseq.services.schedules import Schedule, validate_schedule
from parseq.web.api.fields import (
    CheckedNested,
    Scalar,
    StrictBoolean,
    StrictInteger,
    StrictNumber,
    StrictString,
    choice,
    enum_text,
    rule,
)
from parseq.web.api.schemas import ARGS_KEYS, TIME, RunSchema


def _limit_field(name: str) -> fields.Field:
    limit = parser_rules.LIMITS[name]
    cls = StrictNumber if limit.fractional else StrictInteger
    return cls(
        allow_none=True,
        validate=rule(parser_rules.check_limit, name),
        metadata={
            "minimum": 0,
            "maximum": parser_rules.MAX_LIMIT,
            "description": f"{limit.unit}; 0 = no limit, null = the configured default",
        },
    )


class LimitsSchema(ma.Schema):
    """Sandbox limits of each run; on update only the given ones change."""

    memory_bytes = _limit_field("memory_bytes")
    cpu_s = _limit_field("cpu_s")
    processes = _limit_field("processes")
    file_bytes = _limit_field("file_bytes")
    open_files = _limit_field("open_files")


class IntervalField(ma.fields.Raw):
    """Seconds, or text such as ``90s``, ``15m``, ``1h30m``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ma.ValidationError("must be whole seconds or text such as 15m, 2h, 1h30m")
        return value


def _text(description: str) -> fields.String:
    return StrictString(allow_none=True, metadata={"description": description})


class ScheduleInSchema(ma.Schema):
    """A schedule: it replaces the whole stored one. ``type`` picks ``cron``, ``interval_s`` or
    ``run_at`` (or the one given picks the type); times without an offset are read in
    ``timezone``; ``start_at`` / ``end_at`` bound when it fires."""

    type = choice(ScheduleType, allow_none=True)
    cron = _text("5 fields: minute hour day-of-month month day-of-week, e.g. */15 * * * *")
    interval_s = IntervalField(
        allow_none=True,
        metadata={
            "json_schema": {"type": ["integer", "string", "null"]},
            "description": f"seconds (1 to {parser_rules.MAX_SECONDS}), or 90s, 15m, 2h",
        },
    )
    run_at = _text("the one-off run time (ISO 8601)")
    start_at = _text("no runs before (ISO 8601)")
    end_at = _text("no runs after (ISO 8601)")
    timezone = _text("IANA name, e.g. UTC, Europe/Moscow (default UTC)")
    overlap = choice(
        OverlapPolicy,
        allow_none=True,
        metadata={"description": "skip (default): no new run while one is pending or running"},
    )

    @ma.post_load
    def to_schedule(self, data: dict[str, Any], **kwargs: Any) -> Schedule:
        """Checked and normalized by the scheduler's rules, as the admin's form is."""
        names = {"start_at": "schedule_start_at", "end_at": "schedule_end_at"}
        given = {names.get(k, k): v for k, v in data.items() if k != "type"}
        try:
            schedule = validate_schedule(data.get("type"), **given)
            return parser_rules.check_interval_s(schedule)
        except ParseqError as exc:
            field = getattr(exc, "field", None)
            field = {v: k for k, v in names.items()}.get(field, field)
            raise ma.ValidationError(f"{field}: {exc.message}" if field else exc.message) from None


class NotificationsInSchema(ma.Schema):
    """Merged into the parser's own settings; a null removes one (the PARSEQ_NOTIFY_*
    default applies). Checked as a whole by ``notify_settings.check_settings``, as the
    admin's form is."""

    # Enums documented only: check_settings refuses others, with the admin's message.
    events = fields.List(
        StrictString(metadata={"enum": list(notify_settings.EVENTS)}), allow_none=True
    )
    webhook_url = _text("http(s) URL; write-only (shown by host)")
    webhook_secret = _text("HMAC signing secret; write-only")
    webhook_format = StrictString(
        allow_none=True, metadata={"enum": [*notify_settings.FORMATS, None]}
    )
    email_to = fields.List(StrictString(), allow_none=True, metadata={"minItems": 1})
    slow_after_s = StrictNumber(
        allow_none=True, metadata={"minimum": 0, "maximum": notify_settings.MAX_SECONDS}
    )
    email_digest_s = StrictNumber(
        allow_none=True, metadata={"minimum": 0, "maximum": notify_settings.MAX_SECONDS}
    )


class ParserCreateSchema(ma.Schema):
    """A parser to register. Secrets are accepted here and never shown again."""

    name = StrictString(
        required=True,
        validate=rule(validate_name),
        metadata={"pattern": NAME_RE.pattern, "example": "quotes"},
    )
    description = StrictString()
    kind = choice(ParserKind, metadata={"description": "default: script"})
    path = StrictString(
        required=True,
        validate=ma.validate.Length(min=1, error="path is required"),
        metadata={"description": "relative to parsers/ (.py) or notebooks/ (.ipynb)"},
    )
    requirements = StrictString(metadata={"description": "pip requirement lines"})
    engine = choice(
        NotebookEngine,
        metadata={"description": "notebooks: fast (no kernel, the default) or kernel"},
    )
    default_args = fields.Dict(validate=rule(runs.check_args), metadata={"json_schema": ARGS_KEYS})
    default_positional = fields.List(Scalar(), validate=rule(check_positional))
    secrets = fields.Dict(
        keys=fields.String(validate=rule(validate_secret_name)),
        values=StrictString(allow_none=True),
        metadata={
            "writeOnly": True,
            "description": "name -> value, write-only; on update merged into the stored "
            "ones, a null removes one",
            "json_schema": {
                "propertyNames": {
                    "pattern": SECRET_NAME_RE.pattern,
                    "not": {"enum": sorted(RESERVED_ENV)},
                }
            },
        },
    )
    timeout_s = StrictNumber(
        allow_none=True,
        validate=rule(parser_rules.check_timeout_s),
        metadata={
            "exclusiveMinimum": 0,
            "maximum": parser_rules.MAX_SECONDS,
            "description": "wall-clock limit of a run; null = the configured default",
        },
    )
    max_retries = StrictInteger(
        validate=rule(parser_rules.check_max_retries),
        metadata={"minimum": 0, "maximum": parser_rules.MAX_RETRIES},
    )
    retry_on_timeout = StrictBoolean(metadata={"description": "retry runs that timed out too"})
    limits = fields.Nested(LimitsSchema)
    enabled = StrictBoolean(metadata={"description": "scheduled runs on"})
    schedule = fields.Nested(
        ScheduleInSchema, allow_none=True, metadata={"description": "null: no schedule"}
    )
    notifications = CheckedNested(NotificationsInSchema, notify_settings.check_settings)

    @ma.post_load
    def no_schedule(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "schedule" in data and data["schedule"] is None:
            data["schedule"] = Schedule(None)
        return data


class ParserUpdateSchema(ParserCreateSchema):
    """The fields to change; the others keep their values."""

    name = StrictString(validate=rule(validate_name), metadata={"pattern": NAME_RE.pattern})
    path = StrictString(
        validate=ma.validate.Length(min=1, error="path is required"),
        metadata={"description": "relative to parsers/ (.py) or notebooks/ (.ipynb)"},
    )


class LimitsOutSchema(ma.Schema):
    memory_bytes = fields.Integer(allow_none=True, required=True)
    cpu_s = fields.Float(allow_none=True, required=True)
    processes = fields.Integer(allow_none=True, required=True)
    file_bytes = fields.Integer(allow_none=True, required=True)
    open_files = fields.Integer(allow_none=True, required=True)


class ScheduleOutSchema(ma.Schema):
    type = enum_text(ScheduleType, required=True)
    cron = fields.String(allow_none=True, required=True)
    interval_s = fields.Integer(allow_none=True, required=True)
    run_at = fields.String(allow_none=True, required=True, metadata=TIME)
    start_at = fields.String(allow_none=True, required=True, metadata=TIME)
    end_at = fields.String(allow_none=True, required=True, metadata=TIME)
    timezone = fields.String(required=True)
    overlap = enum_text(OverlapPolicy, required=True)


class NotificationsOutSchema(ma.Schema):
    """The parser's own settings; the webhook by host and its secret as set or not."""

    events = fields.List(fields.String())
    webhook_format = fields.String()
    email_to = fields.List(fields.String())
    slow_after_s = fields.Float()
    email_digest_s = fields.Float()
    webhook = fields.String(allow_none=True, required=True)
    webhook_secret_set = fields.Boolean(required=True)


class SkipSchema(ma.Schema):
    scheduled_for = fields.String(required=True, metadata=TIME)
    reason = fields.String(required=True)


class ParserSchema(ma.Schema):
    """A parser; in detail (one parser) also its last run and its next fire times."""

    name = fields.String(required=True)
    description = fields.String(required=True)
    kind = enum_text(ParserKind, required=True)
    path = fields.String(required=True)
    code_version = fields.Integer(
        allow_none=True, metadata={"description": "the current code version (null: a file)"}
    )
    requirements = fields.String(required=True)
    engine = enum_text(NotebookEngine, required=True)
    default_args = fields.Dict(required=True)
    default_positional = fields.List(Scalar(), required=True)
    secrets = fields.List(
        fields.String(),
        allow_none=True,
        required=True,
        metadata={"description": "names only; null: they do not decrypt with the keys"},
    )
    timeout_s = fields.Float(allow_none=True, required=True)
    max_retries = fields.Integer(required=True)
    retry_on_timeout = fields.Boolean(required=True)
    limits = fields.Nested(LimitsOutSchema, required=True)
    enabled = fields.Boolean(required=True)
    schedule = fields.Nested(ScheduleOutSchema, allow_none=True, required=True)
    notifications = fields.Nested(
        NotificationsOutSchema,
        allow_none=True,
        required=True,
        metadata={"description": "null: they do not decrypt with the configured keys"},
    )
    next_run_at = fields.String(allow_none=True, required=True, metadata=TIME)
    created_at = fields.String(required=True, metadata=TIME)
    updated_at = fields.String(required=True, metadata=TIME)
    next_fire_times = fields.List(fields.String(metadata=TIME))
    skipped = fields.List(fields.Nested(SkipSchema))
    last_run = fields.Nested(RunSchema, allow_none=True)
    warnings = fields.List(
        fields.String(), metadata={"description": "create/update: what the fast engine refuses"}
    )


class ParserListSchema(ma.Schema):
    parsers = fields.List(fields.Nested(ParserSchema), required=True)
