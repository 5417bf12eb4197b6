"""The Flask-Admin panel at ``/admin``: parsers (with Run now) and runs."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, flash
from flask_admin import Admin
from flask_admin.actions import action
from flask_admin.contrib.sqla import ModelView
from flask_admin.contrib.sqla import filters as sqla_filters
from flask_admin.form import DateTimeField
from markupsafe import Markup, escape
from wtforms import SelectField, StringField
from wtforms import ValidationError as FormValidationError
from wtforms.validators import Optional

from parseq import admin_tokens, notebooks, runs
from parseq import requirements as reqs
from parseq.errors import ParseqError
from parseq.models import (
    OverlapPolicy,
    Parser,
    ParserKind,
    Run,
    RunStatus,
    RunTrigger,
    ScheduleSkip,
    ScheduleType,
    db,
)
from parseq.registry import validate_name, validate_path

STATUS_COLORS = {
    RunStatus.PENDING: "secondary",
    RunStatus.RUNNING: "primary",
    RunStatus.COMPLETED: "success",
    RunStatus.ERROR: "danger",
    RunStatus.TIMEOUT: "warning",
    RunStatus.CANCELLED: "dark",
}


def _status_badge(_view: Any, _ctx: Any, run: Run, _name: str) -> Markup:
    color = STATUS_COLORS.get(run.status, "secondary")
    return Markup(f'<span class="badge badge-{color}">{escape(run.status.value)}</span>')


def _files_links(_view: Any, _ctx: Any, run: Run, _name: str) -> Markup:
    links = [
        f'<a href="/api/v1/runs/{run.id}/files/{escape(f.name)}">{escape(f.name)}</a>'
        for f in run.files
    ]
    return Markup(", ".join(links))


def _progress(_view: Any, _ctx: Any, run: Run, _name: str) -> str:
    """``3/10 (30%) page 3``: what the parser last reported with ``parseq_sdk.progress``."""
    if run.progress_done is None and run.progress_message is None:
        return ""
    done = f"{run.progress_done:g}" if run.progress_done is not None else "?"
    if run.progress_total:
        pct = 100 * (run.progress_done or 0) / run.progress_total
        done = f"{done}/{run.progress_total:g} ({pct:.0f}%)"
    return f"{done} {run.progress_message or ''}".strip()


def _schedule_summary(_view: Any, _ctx: Any, parser: Parser, _name: str) -> str:
    schedule = parser.schedule_dict()
    if schedule is None:
        return ""
    detail = {"cron": schedule["cron"], "interval": f"every {schedule['interval_s']} s"}
    return f"{schedule['type']}: {detail.get(schedule['type'], schedule['run_at'])}"


#: Schedule form fields: datetimes are entered in the parser's timezone (see on_form_prefill).
_SCHEDULE_DATETIMES = ("run_at", "schedule_start_at", "schedule_end_at")
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


class ParserView(ModelView):
    """Register and edit parsers; run them from the list."""

    column_list = (
        "name",
        "kind",
        "path",
        "enabled",
        "schedule_type",
        "next_run_at",
        "description",
        "updated_at",
    )
    column_labels = {"schedule_type": "Schedule", "interval_s": "Interval"}
    column_formatters = {"schedule_type": _schedule_summary}
    column_searchable_list = ("name", "description")
    column_filters = ("kind", "enabled")
    form_columns = (
        "name",
        "description",
        "kind",
        "path",
        "requirements",
        "default_args",
        "timeout_s",
        "max_retries",
        "enabled",
        "schedule_type",
        "cron",
        "interval_s",
        "run_at",
        "schedule_start_at",
        "schedule_end_at",
        "timezone",
        "overlap",
    )
    form_excluded_columns = ("runs", "secrets", "created_at", "updated_at")
    form_overrides = {
        "interval_s": StringField,
        "schedule_type": SelectField,
        "overlap": SelectField,
        **{name: DateTimeField for name in _SCHEDULE_DATETIMES},
    }
    form_args = {
        **{
            name: {"description": text, "validators": [Optional()]}
            for name, text in _SCHEDULE_HELP.items()
            if name != "enabled"  # empty timezone/overlap mean the defaults: validate_schedule
        },
        "schedule_type": {
            "description": _SCHEDULE_HELP["schedule_type"],
            "choices": [("", "(none)"), *((t.value, t.value) for t in ScheduleType)],
            "coerce": _option_value,
            "validators": [Optional()],
        },
        "overlap": {
            "description": _SCHEDULE_HELP["overlap"],
            "choices": [(p.value, p.value) for p in OverlapPolicy],
            "coerce": _option_value,
            "validators": [Optional()],
        },
    }

    def on_form_prefill(self, form: Any, id: Any) -> None:
        """Show stored (UTC) schedule datetimes in the parser's timezone, as they are entered."""
        from zoneinfo import ZoneInfo

        model = self.get_one(id)
        try:
            tz = ZoneInfo(model.timezone or "UTC")
        except (KeyError, ValueError):
            return
        for name in _SCHEDULE_DATETIMES:
            value = getattr(model, name)
            if value is not None:
                form[name].data = value.astimezone(tz).replace(tzinfo=None)

    def on_model_change(self, form: Any, model: Parser, is_created: bool) -> None:
        from flask import current_app

        config = current_app.extensions["parseq"].config
        try:
            validate_name(model.name)
            model.kind = ParserKind(model.kind)
            model.path = validate_path(config, model.kind, model.path)
            reqs.parse(model.requirements or "", reqs.Policy.from_config(config))
            if model.kind is ParserKind.NOTEBOOK:
                notebooks.check_parser_notebook(config, model.path)
            if isinstance(model.default_args, str):
                model.default_args = json.loads(model.default_args or "{}")
            runs.check_args(model.default_args)
            _apply_schedule(form, model, is_created)
        except (ParseqError, ValueError) as exc:
            field = getattr(exc, "field", None)
            message = getattr(exc, "message", str(exc))
            if field and field in form:
                form[field].errors = [*form[field].errors, message]
            raise FormValidationError(message) from exc

    @action("run", "Run now", "Queue a run of each selected parser?")
    def action_run(self, ids: list[str]) -> None:
        for parser in db.session.execute(
            db.select(Parser).where(Parser.id.in_([int(i) for i in ids]))
        ).scalars():
            run = runs.create_run(parser, trigger=RunTrigger.MANUAL)
            flash(f"Queued run {run.id} of {parser.name}.", "success")


def _apply_schedule(form: Any, model: Parser, is_created: bool) -> None:
    """Validate the schedule fields (``scheduler.validate_schedule``) and store them normalized.
    A one-off date in the past is refused unless it is the one already saved."""
    from parseq.scheduler import validate_schedule

    fields = {
        "cron": model.cron,
        "interval_s": model.interval_s,
        "run_at": model.run_at,
        "schedule_start_at": model.schedule_start_at,
        "schedule_end_at": model.schedule_end_at,
        "timezone": model.timezone,
        # An empty select comes back as "None" (wtforms coerces with str).
        "overlap": None if model.overlap in ("", "None", "__None") else model.overlap,
    }
    schedule = validate_schedule(model.schedule_type, **fields, allow_past=True)
    saved = None if is_created else form.run_at.object_data
    if schedule.run_at is not None and schedule.run_at != saved:
        schedule = validate_schedule(model.schedule_type, **fields)
    schedule.apply(model)


class RunView(ModelView):
    """Every run, newest first; read-only."""

    can_create = False
    can_edit = False
    can_view_details = True
    column_default_sort = ("id", True)
    column_list = (
        "id",
        "parser",
        "status",
        "trigger",
        "queued_at",
        "started_at",
        "finished_at",
        "exit_code",
        "progress",
        "error",
        "env_key",
    )
    column_details_list = (*column_list, "scheduled_for", "args", "worker_id", "files")
    column_filters = (
        "status",
        "trigger",
        "parser.name",
        # UTCDateTime is a TypeDecorator, which Flask-Admin cannot guess a filter for.
        sqla_filters.DateTimeBetweenFilter(Run.queued_at, "Queued"),
    )
    column_formatters = {"status": _status_badge, "files": _files_links, "progress": _progress}
    column_formatters_detail = column_formatters
    page_size = 50


class ScheduleSkipView(ModelView):
    """Scheduled occurrences that made no run, and why; read-only."""

    can_create = False
    can_edit = False
    can_delete = False
    column_default_sort = ("id", True)
    column_list = ("parser", "scheduled_for", "reason", "created_at")
    column_filters = ("parser.name",)
    page_size = 50


def init_app(app: Flask) -> Admin:
    admin = Admin(app, name="Parseq", url="/admin")
    admin.add_view(ParserView(Parser, db, name="Parsers", endpoint="parsers"))
    admin.add_view(RunView(Run, db, name="Runs", endpoint="runs"))
    admin.add_view(ScheduleSkipView(ScheduleSkip, db, name="Skipped occurrences", endpoint="skips"))
    admin_tokens.add_view(admin)
    return admin
