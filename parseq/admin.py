"""The Flask-Admin panel at ``/admin``: parsers (with Run now) and runs."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, flash
from flask_admin import Admin
from flask_admin.actions import action
from flask_admin.contrib.sqla import ModelView
from flask_admin.contrib.sqla import filters as sqla_filters
from markupsafe import Markup, escape
from wtforms import ValidationError as FormValidationError

from parseq import requirements as reqs
from parseq import runs
from parseq.errors import ParseqError
from parseq.models import Parser, ParserKind, Run, RunStatus, RunTrigger, db
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


class ParserView(ModelView):
    """Register and edit parsers; run them from the list."""

    column_list = ("name", "kind", "path", "enabled", "description", "updated_at")
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
        "retry_on_timeout",
        "max_memory_bytes",
        "max_cpu_s",
        "max_processes",
        "max_file_bytes",
        "max_open_files",
        "enabled",
    )
    form_excluded_columns = ("runs", "secrets", "created_at", "updated_at")

    def on_model_change(self, form: Any, model: Parser, is_created: bool) -> None:
        from flask import current_app

        config = current_app.extensions["parseq"].config
        try:
            validate_name(model.name)
            model.kind = ParserKind(model.kind)
            model.path = validate_path(config, model.kind, model.path)
            reqs.parse(model.requirements or "", reqs.Policy.from_config(config))
            if isinstance(model.default_args, str):
                model.default_args = json.loads(model.default_args or "{}")
            runs.check_args(model.default_args)
        except (ParseqError, ValueError) as exc:
            raise FormValidationError(getattr(exc, "message", str(exc))) from exc

    @action("run", "Run now", "Queue a run of each selected parser?")
    def action_run(self, ids: list[str]) -> None:
        for parser in db.session.execute(
            db.select(Parser).where(Parser.id.in_([int(i) for i in ids]))
        ).scalars():
            run = runs.create_run(parser, trigger=RunTrigger.MANUAL)
            flash(f"Queued run {run.id} of {parser.name}.", "success")


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
    column_details_list = (
        *column_list,
        "attempt",
        "retry_of",
        "not_before",
        "args",
        "worker_id",
        "heartbeat_at",
        "files",
    )
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


def init_app(app: Flask) -> Admin:
    admin = Admin(app, name="Parseq", url="/admin")
    admin.add_view(ParserView(Parser, db, name="Parsers", endpoint="parsers"))
    admin.add_view(RunView(Run, db, name="Runs", endpoint="runs"))
    return admin
