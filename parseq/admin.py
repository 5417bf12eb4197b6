"""The Flask-Admin panel at ``/admin``: dashboard, parsers (Run now, Enable/Disable) and runs.

Every page needs a login (:mod:`parseq.auth`). Views only parse forms and render: what they do
goes through :mod:`parseq.runs` and :mod:`parseq.registry`, as the REST API does.
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
from wtforms import SelectChoice, fields
from wtforms import ValidationError as FormValidationError
from wtforms.validators import NumberRange, Optional

from parseq import (
    admin_code,
    admin_notify,
    admin_tokens,
    auth,
    code_store,
    headers,
    notebooks,
    registry,
    runs,
)
from parseq import requirements as reqs
from parseq.admin_forms import (
    JSONListField,
    JSONObjectField,
    RemoveSecretsField,
    RunNowForm,
    ScriptField,
    SecretsField,
    UploadField,
    parse_secrets,
    script_choices,
)
from parseq.admin_runs import RunView, fmt_duration, fmt_time, status_badge
from parseq.admin_schedule import (
    SCHEDULE_DATETIMES,
    SCHEDULE_FORM_ARGS,
    SCHEDULE_FORM_OVERRIDES,
    ScheduleSkipView,
    apply_schedule,
    schedule_summary,
)
from parseq.dashboard import DashboardView
from parseq.errors import ParseqError
from parseq.models import (
    NotebookEngine,
    Parser,
    ParserKind,
    Run,
    RunStatus,
    RunTrigger,
    ScheduleSkip,
    db,
)

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


class ParserView(auth.LoginRequired, ModelView):
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
        "next_run_at": lambda _v, _c, m, _n: fmt_time(m.next_run_at) if m.next_run_at else "",
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
        "timeout_s": fields.FloatField,
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
        "timeout_s": {"label": "Timeout (s)", "validators": [Optional(), NumberRange(min=0.1)]},
        "max_retries": {"validators": [NumberRange(min=0, max=100)]},
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
        from zoneinfo import ZoneInfo

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
        for warning in notebooks.parser_warnings(config, model):
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
