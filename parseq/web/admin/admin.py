"""The Flask-Admin panel at ``/admin``: dashboard, parsers (Run now, Enable/Disable) and runs.

Every page needs a login (:mod:`parseq.web.admin.auth`). Views only parse forms and render: what
they do goes through :mod:`parseq.services.runs` and :mod:`parseq.services.registry`, as the REST
API does.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, current_app, flash, g, redirect, request, url_for
from flask_admin import Admin, expose
from flask_admin.actions import action
from flask_admin.contrib.sqla import ModelView
from flask_admin.theme import Bootstrap4Theme
from markupsafe import Markup
from werkzeug.wrappers import Response
from wtforms import ValidationError as FormValidationError

from parseq.core.errors import ParseqError
from parseq.db.models import (
    NotebookEngine,
    Parser,
    ParserKind,
    Run,
    RunStatus,
    RunTrigger,
    ScheduleSkip,
    db,
)
from parseq.notebooks import validate as notebooks
from parseq.services import code_store, registry, runs, schedules
from parseq.web import headers
from parseq.web.admin import admin_notify, admin_tokens, auth
from parseq.web.admin import code as admin_code
from parseq.web.admin import state as admin_state
from parseq.web.admin.admin_forms import (
    RunNowForm,
    parse_secrets,
)
from parseq.web.admin.admin_runs import RunView, fmt_duration, fmt_time, status_badge
from parseq.web.admin.admin_schedule import (
    ScheduleSkipView,
    apply_schedule,
    schedule_summary,
)
from parseq.web.admin.dashboard import DashboardView
from parseq.web.admin.parser_form import RUN_POLICY_FIELDS, ParserFormMixin

MASK = "••••••••"


def _last_run(parser: Parser) -> Run | None:
    """The parser's newest run, fetched once per page for all listed parsers."""
    cache = g.setdefault("parseq_last_runs", {})
    if parser.id not in cache:
        cache[parser.id] = db.session.execute(
            db.select(Run).where(Run.parser_id == parser.id).order_by(Run.id.desc()).limit(1)
        ).scalar_one_or_none()
    return cache[parser.id]


def _secret_names(_v: Any, _c: Any, parser: Parser, _n: str) -> Markup:
    names = sorted(parser.secrets or {})
    item = Markup("<code>{}</code> = {}")  # format() escapes each value
    return Markup(", ").join(item.format(n, MASK) for n in names) or "none"


class ParserView(ParserFormMixin, auth.LoginRequired, ModelView):
    """Register and edit parsers; run, enable and disable them from the list."""

    list_template = "parseq/parser_list.html"
    details_template = "parseq/parser_details.html"
    can_view_details = True
    column_list = (
        "name",
        "kind",
        "enabled",
        "schedule_type",
        "next_run_at",
        "last_status",
        "last_run_at",
        "description",
    )
    column_labels = {
        "schedule_type": "Schedule",
        "interval_s": "Interval",
        "next_run_at": "Next run",
        "last_status": "Last run",
        "last_run_at": "Last run at",
        "timeout_s": "Timeout (s)",
    }
    column_searchable_list = ("name", "description", "path")
    column_filters = ("kind", "enabled", "name", "path")
    column_sortable_list = ("name", "kind", "enabled")
    column_default_sort = "name"
    column_details_list = (
        "name",
        "kind",
        "path",
        "description",
        "requirements",
        "default_args",
        "default_positional",
        "secrets",
        "timeout_s",
        *RUN_POLICY_FIELDS,
        "enabled",
        "schedule_type",
        "next_run_at",
        "code_version",
        "created_at",
        "updated_at",
    )
    column_formatters = {
        "schedule_type": schedule_summary,
        "next_run_at": lambda _v, _c, m, _n: fmt_time(schedules.next_run_at(m)),
        "name": lambda _v, _c, m, _n: Markup('<a href="{}">{}</a>').format(
            url_for(".details_view", id=m.id), m.name
        ),
        "kind": lambda _v, _c, m, _n: m.kind.value,
        "last_status": lambda _v, _c, m, _n: status_badge(
            r.status if (r := _last_run(m)) else None
        ),
        "last_run_at": lambda _v, _c, m, _n: fmt_time(r.queued_at) if (r := _last_run(m)) else "",
        "secrets": _secret_names,
        "code_version": lambda _v, _c, m, _n: admin_code.version_cell(m, m.code_version),
        "default_args": lambda _v, _c, m, _n: Markup("<code>{}</code>").format(
            json.dumps(m.default_args or {})
        ),
        "default_positional": lambda _v, _c, m, _n: Markup("<code>{}</code>").format(
            json.dumps(m.default_positional or [])
        ),
        "created_at": lambda _v, _c, m, _n: fmt_time(m.created_at),
        "updated_at": lambda _v, _c, m, _n: fmt_time(m.updated_at),
    }
    column_formatters_detail = {**column_formatters, "name": lambda _v, _c, m, _n: m.name}

    def on_model_change(self, form: Any, model: Parser, is_created: bool) -> None:
        state = current_app.extensions["parseq"]
        config = state.config
        try:
            shown = None if is_created else f"{model.kind.value}:{model.path}"
            stored = admin_code.apply(form, model, shown if model.path else admin_code.STORED)
            if not stored and form.script.data:
                kind, _, rel = form.script.data.partition(":")
                model.kind = ParserKind(kind)
                model.path = registry.validate_path(config, model.kind, rel)
            model.engine = NotebookEngine(form.engine.data or NotebookEngine.FAST.value)
            if model.kind is ParserKind.NOTEBOOK and model.path:
                notebooks.check_parser_notebook(config, model.path)
            apply_schedule(form, model, is_created)
            admin_notify.apply_form(form, model)
            code_store.refresh(config, state.storage, model)  # a changed file, a new lock
        except (ParseqError, ValueError) as exc:
            field = getattr(exc, "field", None)
            message = getattr(exc, "message", str(exc))
            if field and field in form:
                form[field].errors = [*form[field].errors, message]
            raise FormValidationError(message) from exc
        new = parse_secrets(form.secrets_set.data or "")
        remove = set((form.secrets_remove and form.secrets_remove.data) or ())
        if new or remove:
            kept = {k: v for k, v in (model.secrets or {}).items() if k not in remove}
            model.secrets = {**kept, **new}  # a new dict: encryption may sit behind the attribute

    def delete_model(self, model: Parser) -> bool:
        """Delete through the API's rule: refused while a run is pending or running; stored
        files go with the runs."""
        try:
            runs.delete_parser(model, current_app.extensions["parseq"].storage)
        except ParseqError as exc:
            db.session.rollback()
            flash(exc.message, "error")
            return False
        return True

    def after_model_change(self, form: Any, model: Parser, is_created: bool) -> None:
        """Saved, but say now what the fast engine would refuse at the first run."""
        config = current_app.extensions["parseq"].config
        for warning in registry.parser_warnings(config, model):
            flash(f"Warning: {warning}", "warning")

    def code_versions(self, parser: Parser) -> list[Any]:
        """The parser's code versions, newest first (the details page lists them)."""
        return code_store.list_versions(parser)

    def history(self, parser: Parser, limit: int = 25) -> list[Run]:
        return list(
            db.session.execute(
                db.select(Run)
                .where(Run.parser_id == parser.id)
                .order_by(Run.id.desc())
                .limit(limit)
            ).scalars()
        )

    def latest_output(self, parser: Parser) -> Run | None:
        """The newest completed run, whose ``output.txt`` the detail page links to."""
        return db.session.execute(
            db.select(Run)
            .where(Run.parser_id == parser.id, Run.status == RunStatus.COMPLETED)
            .order_by(Run.id.desc())
            .limit(1)
        ).scalar_one_or_none()

    @expose("/run/<int:parser_id>", methods=("GET", "POST"))
    def run_view(self, parser_id: int) -> Any:
        """Run now, with optional arguments overlaid on the parser's defaults."""
        parser = db.get_or_404(Parser, parser_id)
        defaults = {"args": parser.default_args or {}, "positional": parser.default_positional}
        form = RunNowForm(data=defaults)
        if form.validate_on_submit():
            run = runs.create_run(
                parser, form.args.data, RunTrigger.MANUAL, positional=form.positional.data
            )
            flash(f"Queued run {run.id} of {parser.name}.", "success")
            return redirect(url_for("runs.details_view", id=run.id))
        return self.render("parseq/run_now.html", form=form, parser=parser)

    @expose("/notify-test/<int:parser_id>", methods=("POST",))
    def notify_test(self, parser_id: int) -> Response:
        """Send a sample notification to each of the parser's channels."""
        admin_notify.send_test(db.get_or_404(Parser, parser_id))
        return redirect(url_for(".details_view", id=parser_id))

    @expose("/reset-state/<int:parser_id>", methods=("POST",))
    def reset_state(self, parser_id: int) -> Response:
        return admin_state.reset_view(parser_id)

    def trend_chart(self, parser: Parser) -> Markup:
        return admin_notify.trend_chart(parser)

    @expose("/toggle/<int:parser_id>", methods=("POST",))
    def toggle(self, parser_id: int) -> Response:
        parser = db.get_or_404(Parser, parser_id)
        registry.set_enabled(parser, not parser.enabled)
        flash(f"{parser.name} {'enabled' if parser.enabled else 'disabled'}.", "success")
        return redirect(auth.safe_path(request.form.get("url")) or url_for(".index_view"))

    def _selected(self, ids: list[str]) -> list[Parser]:
        query = db.select(Parser).where(Parser.id.in_([int(i) for i in ids]))
        return list(db.session.execute(query.order_by(Parser.name)).scalars())

    @action("run", "Run now", "Queue a run of each selected parser?")
    def action_run(self, ids: list[str]) -> None:
        for parser in self._selected(ids):
            run = runs.create_run(parser, trigger=RunTrigger.MANUAL)
            flash(f"Queued run {run.id} of {parser.name}.", "success")

    @action("enable", "Enable")
    def action_enable(self, ids: list[str]) -> None:
        for parser in self._selected(ids):
            registry.set_enabled(parser, True)
        flash(f"{len(ids)} parser(s) enabled.", "success")

    @action("disable", "Disable")
    def action_disable(self, ids: list[str]) -> None:
        for parser in self._selected(ids):
            registry.set_enabled(parser, False)
        flash(f"{len(ids)} parser(s) disabled.", "success")


def init_app(app: Flask) -> Admin:
    auth.init_app(app)
    app.jinja_env.globals.update(
        status_badge=status_badge, fmt_time=fmt_time, fmt_duration=fmt_duration
    )
    admin = Admin(
        app,
        name="Parseq",
        url="/admin",
        index_view=DashboardView(name="Dashboard", url="/admin"),
        theme=Bootstrap4Theme(base_template="parseq/master.html", fluid=True),
        csp_nonce_generator=headers.csp_nonce,
    )
    admin.add_view(ParserView(Parser, db, name="Parsers", endpoint="parsers"))
    admin.add_view(RunView(Run, db, name="Runs", endpoint="runs"))
    admin.add_view(ScheduleSkipView(ScheduleSkip, db, name="Skipped occurrences", endpoint="skips"))
    admin.add_view(auth.LoginView(name="Log in", endpoint="login", url="/admin/login"))
    admin_tokens.add_view(admin)
    return admin
