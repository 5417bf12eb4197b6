"""The admin's schedule pieces: form fields of a parser's schedule, and skipped occurrences.

Validation and normalization are :func:`parseq.services.schedules.validate_schedule`'s; this
module only maps form fields onto it.
"""

from __future__ import annotations

from typing import Any

from flask_admin.contrib.sqla import ModelView
from flask_admin.form import DateTimeField
from wtforms import SelectChoice, fields
from wtforms.validators import Optional

from parseq.db.models import OverlapPolicy, Parser, ScheduleType
from parseq.services.schedules import validate_schedule
from parseq.web.admin import auth


def schedule_summary(_view: Any, _ctx: Any, parser: Parser, _name: str) -> str:
    schedule = parser.schedule_dict()
    if schedule is None:
        return ""
    detail = {"cron": schedule["cron"], "interval": f"every {schedule['interval_s']} s"}
    return f"{schedule['type']}: {detail.get(schedule['type'], schedule['run_at'])}"


#: Schedule form fields: datetimes are entered in the parser's timezone (see on_form_prefill).
SCHEDULE_DATETIMES = ("run_at", "schedule_start_at", "schedule_end_at")
_SCHEDULE_HELP = {
    "schedule_type": "cron, interval or date (one-off); empty = runs by hand or API only",
    "cron": "5 fields: minute hour day-of-month month day-of-week (0 or 7 = Sunday)",
    "interval_s": "seconds, or 90s, 15m, 2h, 1h30m",
    "run_at": "one-off run time, in the timezone below",
    "schedule_start_at": "optional: no runs before (timezone below)",
    "schedule_end_at": "optional: no runs after (timezone below)",
    "timezone": "IANA name, e.g. UTC, Europe/Moscow",
    "overlap": "skip = no new run while one is pending or running",
    "enabled": "scheduled runs on (runs by hand work either way)",
}


def _option_value(value: Any) -> str:
    """Select options are enum values; the model holds members (or None)."""
    return "" if value is None else str(getattr(value, "value", value))


def apply_schedule(form: Any, model: Parser, is_created: bool) -> None:
    """Validate the schedule fields (:func:`schedules.validate_schedule`) and store them normalized.
    A one-off date in the past is refused unless it is the one already saved."""
    fields_ = {
        "cron": model.cron,
        "interval_s": model.interval_s,
        "run_at": model.run_at,
        "schedule_start_at": model.schedule_start_at,
        "schedule_end_at": model.schedule_end_at,
        "timezone": model.timezone,
        # An empty select comes back as "None" (wtforms coerces with str).
        "overlap": None if model.overlap in ("", "None", "__None") else model.overlap,
    }
    schedule = validate_schedule(model.schedule_type, **fields_, allow_past=True)
    saved = None if is_created else form.run_at.object_data
    if schedule.run_at is not None and schedule.run_at != saved:
        schedule = validate_schedule(model.schedule_type, **fields_)
    schedule.apply(model)


SCHEDULE_FORM_OVERRIDES = {
    "interval_s": fields.StringField,
    "schedule_type": fields.SelectField,
    "overlap": fields.SelectField,
    **{name: DateTimeField for name in SCHEDULE_DATETIMES},
}
SCHEDULE_FORM_ARGS: dict[str, dict[str, Any]] = {
    **{
        name: {"description": text, "validators": [Optional()]}
        for name, text in _SCHEDULE_HELP.items()
        if name != "enabled"  # empty timezone/overlap mean the defaults: validate_schedule
    },
    "schedule_type": {
        "description": _SCHEDULE_HELP["schedule_type"],
        "choices": [SelectChoice("", "(none)"), *(SelectChoice(t.value) for t in ScheduleType)],
        "coerce": _option_value,
        "validators": [Optional()],
    },
    "overlap": {
        "description": _SCHEDULE_HELP["overlap"],
        "choices": [SelectChoice(p.value) for p in OverlapPolicy],
        "coerce": _option_value,
        "validators": [Optional()],
    },
}


class ScheduleSkipView(auth.LoginRequired, ModelView):
    """Scheduled occurrences that made no run, and why; read-only."""

    can_create = False
    can_edit = False
    can_delete = False
    column_default_sort = ("id", True)
    column_list = ("parser", "scheduled_for", "reason", "created_at")
    column_filters = ("parser.name",)
    page_size = 50
