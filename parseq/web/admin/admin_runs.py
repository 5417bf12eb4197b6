"""The admin's runs: list (status, duration, progress), detail (log tail, files, output
preview), Cancel, Run again, and file downloads for a logged-in session.

Actions go through :mod:`parseq.services.runs` and downloads through
:func:`parseq.web.files.serve`, the same code the REST API uses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from flask import current_app, flash, g, has_app_context, redirect, request, url_for
from flask_admin import expose
from flask_admin.contrib.sqla import ModelView
from flask_admin.contrib.sqla import filters as sqla_filters
from markupsafe import Markup, escape
from werkzeug.wrappers import Response

from parseq.core.errors import ParseqError
from parseq.db.models import Parser, Run, RunFile, RunStatus, RunTrigger, db
from parseq.db.runs import LOG_FILE, OUTPUT_FILE
from parseq.services import livelog, notify, runs
from parseq.web import files
from parseq.web.admin.auth import LoginRequired
from parseq.web.admin.code import version_cell

STATUS_COLORS = {
    RunStatus.PENDING: "secondary",
    RunStatus.RUNNING: "primary",
    RunStatus.COMPLETED: "success",
    RunStatus.ERROR: "danger",
    RunStatus.TIMEOUT: "warning",
    RunStatus.CANCELLED: "dark",
}
LOG_TAIL_LINES = 200
LOG_TAIL_BYTES = 64 * 1024
PREVIEW_LINES = 50
PREVIEW_BYTES = 16 * 1024


def status_badge(status: RunStatus | None) -> Markup:
    if status is None:
        return Markup('<span class="text-muted">never run</span>')
    color = STATUS_COLORS.get(status, "secondary")
    badge = Markup('<span class="badge badge-{} status-{}">{}</span>')  # format() escapes
    return badge.format(color, status.value, status.value)


def warnings_badge(run: Run) -> Markup:
    """A yellow badge after the status when the run has warnings (their text as its title)."""
    if not run.warnings:
        return Markup("")
    badge = Markup(' <span class="badge badge-warning run-warnings" title="{}">{} {}</span>')
    count = len(run.warnings)
    return badge.format("\n".join(run.warnings), count, "warning" if count == 1 else "warnings")


def warnings_list(run: Run) -> Markup:
    """The run's warnings, one per line, on its detail page."""
    items = Markup("").join(Markup("<li>{}</li>").format(w) for w in run.warnings or [])
    return Markup('<ul class="run-warnings mb-0">{}</ul>').format(items) if items else Markup("")


def fmt_time(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def progress_text(run: Run) -> str:
    """``3/10 (30%) page 3``: what the parser last reported with ``parseq_sdk.progress``."""
    if run.progress_done is None and run.progress_message is None:
        return ""
    done = f"{run.progress_done:g}" if run.progress_done is not None else "?"
    if run.progress_total:
        pct = 100 * (run.progress_done or 0) / run.progress_total
        done = f"{done}/{run.progress_total:g} ({pct:.0f}%)"
    return f"{done} {run.progress_message or ''}".strip()


def progress_bar(run: Run) -> Markup:
    """A bootstrap progress bar for a running run; the last reported progress for others."""
    if run.status is not RunStatus.RUNNING:
        return escape(progress_text(run))
    message = escape(run.progress_message or "")
    if run.progress_total:
        pct = max(0, min(100, round(100 * (run.progress_done or 0) / run.progress_total)))
        bar = (
            f'<div class="progress-bar" role="progressbar" style="width: {pct}%" '
            f'aria-valuenow="{pct}" aria-valuemin="0" aria-valuemax="100">{pct}%</div>'
        )
    else:
        bar = (
            '<div class="progress-bar progress-bar-striped progress-bar-animated" '
            'style="width: 100%">running</div>'
        )
    page = Markup('<div class="progress" style="min-width: 8em">{}</div><small>{}</small>')
    # bar is built above from an integer percentage only; format() escapes the message.
    return page.format(Markup(bar), message)  # nosec B704


def _run_link(run: Run) -> Markup:
    return Markup('<a href="{}">{}</a>').format(url_for("runs.details_view", id=run.id), run.id)


def _parser_link(parser: Parser) -> Markup:
    href = url_for("parsers.details_view", id=parser.id)
    return Markup('<a href="{}">{}</a>').format(href, parser.name)


class UTCDateTimeBetweenFilter(sqla_filters.DateTimeBetweenFilter):
    """The date-range filter, reading the entered times as UTC (columns hold aware UTC)."""

    def clean(self, value: str) -> list[datetime]:
        return [d.replace(tzinfo=timezone.utc) for d in super().clean(value)]


def _parser_options() -> list[tuple[int, str]]:
    if not has_app_context():  # Flask-Admin also asks once at start-up, outside any request
        return []
    return [
        tuple(r)
        for r in db.session.execute(db.select(Parser.id, Parser.name).order_by(Parser.name))
    ]


class ParserFilter(sqla_filters.FilterEqual):
    """Runs of one parser, picked by name from the current parsers."""

    def __init__(self) -> None:
        super().__init__(Run.parser_id, "Parser", options=_parser_options)

    def validate(self, value: str) -> bool:
        return value.isdigit()

    def clean(self, value: str) -> int:
        return int(value)


@dataclass(frozen=True)
class RunInfo:
    """What the run detail page shows beyond the run's columns."""

    log_tail: str | None
    log_truncated: bool
    output_preview: str | None
    output_truncated: bool


def _read_tail(key: str) -> tuple[str, bool]:
    storage = current_app.extensions["parseq"].storage
    chunks: deque[bytes] = deque()
    kept = total = 0
    for chunk in storage.iter_bytes(key):
        chunks.append(chunk)
        kept += len(chunk)
        total += len(chunk)
        while kept - len(chunks[0]) >= LOG_TAIL_BYTES:
            kept -= len(chunks.popleft())
    data = b"".join(chunks)[-LOG_TAIL_BYTES:]
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:]), len(lines) > LOG_TAIL_LINES or total > len(data)


def _read_head(key: str) -> tuple[str, bool]:
    storage = current_app.extensions["parseq"].storage
    data = b""
    chunks = storage.iter_bytes(key)
    for chunk in chunks:
        data += chunk
        if len(data) > PREVIEW_BYTES:
            break
    if hasattr(chunks, "close"):
        chunks.close()
    lines = data[:PREVIEW_BYTES].decode("utf-8", "replace").splitlines()
    return "\n".join(lines[:PREVIEW_LINES]), len(data) > PREVIEW_BYTES or len(lines) > PREVIEW_LINES


def _read(stored: RunFile | None, reader: Any) -> tuple[str | None, bool]:
    if stored is None:
        return None, False
    if stored.size == 0:  # stored without an object (uploads.upload_files)
        return "", False
    try:
        return reader(stored.storage_key)
    except ParseqError as exc:
        return f"(cannot read {stored.name}: {exc.message})", False


def estimated_runs() -> int | None:
    """PostgreSQL's estimate of the number of runs (kept by autovacuum/ANALYZE); None on other
    databases or before the table was first analyzed."""
    if db.session.get_bind().dialect.name != "postgresql":
        return None
    query = sa.text("SELECT reltuples::bigint FROM pg_class WHERE oid = CAST(:t AS regclass)")
    estimate = db.session.execute(query, {"t": Run.__tablename__}).scalar()
    return estimate if estimate is not None and estimate >= 0 else None


@dataclass(frozen=True)
class KnownCount:
    """Stands in for Flask-Admin's count query when the count is known already."""

    count: int

    def scalar(self) -> int:
        return self.count


class RunView(LoginRequired, ModelView):
    """Every run, newest first, with server-side pagination; read-only plus Cancel/Run again."""

    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    details_template = "parseq/run_details.html"
    column_default_sort = ("id", True)
    column_list = (
        "id",
        "parser",
        "status",
        "trigger",
        "queued_at",
        "started_at",
        "finished_at",
        "duration",
        "progress",
    )
    column_sortable_list = ("id", "status", "trigger", "queued_at", "started_at", "finished_at")
    column_details_list = (
        "id",
        "parser",
        "status",
        "trigger",
        "attempt",
        "retry_of",
        "not_before",
        "scheduled_for",
        "queued_at",
        "started_at",
        "finished_at",
        "duration",
        "progress",
        "exit_code",
        "error",
        "warnings",
        "args",
        "positional",
        "code_version",
        "env_key",
        "worker_id",
        "heartbeat_at",
    )
    column_filters = (
        ParserFilter(),
        sqla_filters.FilterEqual(
            Run.status, "Status", options=[(s.value, s.value) for s in RunStatus]
        ),
        sqla_filters.FilterEqual(
            Run.trigger, "Trigger", options=[(t.value, t.value) for t in RunTrigger]
        ),
        UTCDateTimeBetweenFilter(Run.queued_at, "Queued"),
    )
    column_formatters = {
        "id": lambda _v, _c, m, _n: _run_link(m),
        "parser": lambda _v, _c, m, _n: _parser_link(m.parser),
        "status": lambda _v, _c, m, _n: status_badge(m.status) + warnings_badge(m),
        "trigger": lambda _v, _c, m, _n: m.trigger.value,
        "queued_at": lambda _v, _c, m, _n: fmt_time(m.queued_at),
        "started_at": lambda _v, _c, m, _n: fmt_time(m.started_at),
        "finished_at": lambda _v, _c, m, _n: fmt_time(m.finished_at),
        "heartbeat_at": lambda _v, _c, m, _n: fmt_time(m.heartbeat_at),
        "duration": lambda _v, _c, m, _n: fmt_duration(m.duration_s),
        "progress": lambda _v, _c, m, _n: progress_bar(m),
    }
    column_formatters_detail = {
        **column_formatters,
        "id": lambda _v, _c, m, _n: m.id,
        "args": lambda _v, _c, m, _n: Markup("<code>{}</code>").format(
            current_app.json.dumps(m.args or {})
        ),
        "positional": lambda _v, _c, m, _n: Markup("<code>{}</code>").format(
            current_app.json.dumps(m.positional or [])
        ),
        "warnings": lambda _v, _c, m, _n: warnings_list(m),
        "code_version": lambda _v, _c, m, _n: version_cell(m.parser, m.code_version),
    }
    page_size = 50
    column_auto_select_related = False  # get_query loads the parsers
    #: Above this many runs (PostgreSQL's own estimate), the unfiltered list numbers its pages
    #: from the estimate: an exact count(*) of a million rows costs more than the page itself.
    estimate_count_above = 100_000

    def get_list(  # type: ignore[override]
        self,
        page: int | None,
        sort_column: Any,
        sort_desc: bool,
        search: str | None,
        filters: Any,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[int | None, Any]:
        g.parseq_runs_estimate = None if search or filters else estimated_runs()
        return super().get_list(page, sort_column, sort_desc, search, filters, *args, **kwargs)

    def get_count_query(self) -> Any:
        estimate = g.get("parseq_runs_estimate")
        if estimate is not None and estimate > self.estimate_count_above:
            return KnownCount(estimate)
        return super().get_count_query()

    def _get_filter_groups(self) -> Any:
        self._refresh_filters_cache()  # parser options change as parsers are added
        return super()._get_filter_groups()

    def get_query(self) -> Any:
        # A second query for the page's parsers: a join would be made for every run the
        # OFFSET skips, so deep pages of a large history would grow slow.
        return super().get_query().options(db.selectinload(Run.parser))

    def run_info(self, run: Run) -> RunInfo:
        log_tail, log_cut = _read(run.file(LOG_FILE), _read_tail)
        if log_tail is None and not run.status.is_final:
            # Live: what the worker copied so far (the page reloads every 2 s meanwhile).
            log_tail, log_cut = livelog.tail(run, LOG_TAIL_BYTES), False
        preview, preview_cut = _read(run.file(OUTPUT_FILE), _read_head)
        return RunInfo(log_tail, log_cut, preview, preview_cut)

    def deliveries(self, run: Run) -> list[dict[str, Any]]:
        """The notifications of the run's end."""
        return notify.deliveries_json(run.id)

    # The parameter is not called ``name``: Flask-Admin's view wrapper takes that one.
    @expose("/<int:run_id>/files/<path:filename>")
    def download(self, run_id: int, filename: str) -> Response:
        return files.serve(files.stored_file(runs.get_run(run_id), filename))

    @expose("/<int:run_id>/cancel", methods=("POST",))
    def cancel(self, run_id: int) -> Response:
        run = runs.get_run(run_id)
        try:
            runs.cancel_run(run)
            flash(f"Run {run.id} cancelled.", "success")
        except ParseqError as exc:
            flash(exc.message, "error")
        return redirect(url_for(".details_view", id=run_id))

    @expose("/<int:run_id>/again", methods=("POST",))
    def again(self, run_id: int) -> Response:
        old = runs.get_run(run_id)
        try:
            run = runs.create_run(
                old.parser, old.args, RunTrigger.MANUAL, positional=old.positional or []
            )
        except ParseqError as exc:
            flash(exc.message, "error")
            return redirect(url_for(".details_view", id=run_id))
        flash(f"Queued run {run.id} of {old.parser.name}.", "success")
        return redirect(url_for(".details_view", id=run.id, url=request.args.get("url")))
