"""The REST API under ``/api/v1``: parsers, runs, health and the OpenAPI document, as JSON.

Every endpoint but ``/health``, the OpenAPI document and its docs page needs an
``Authorization: Bearer <token>`` header (see :mod:`parseq.services.tokens`). Every error answers
``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status. Result files are served by
:mod:`parseq.web.api.downloads`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request
from sqlalchemy.orm import joinedload, selectinload
from werkzeug.exceptions import HTTPException

from parseq.core.argv import check_positional
from parseq.core.errors import BadRequest, ParseqError, TooManyRequests, Unauthorized
from parseq.db.models import Parser, Run, RunStatus, RunTrigger, ScheduleSkip, db, iso
from parseq.services import notify, runs, schedules, tokens
from parseq.services.registry import parser_warnings
from parseq.web import throttle
from parseq.web.api import code, downloads, health, openapi, schemas

bp = Blueprint("api", __name__, url_prefix="/api/v1")
PREFIX = bp.url_prefix or "/api/v1"
#: Endpoints anyone may call: monitors need health, clients need the document.
PUBLIC_ENDPOINTS = frozenset({"api.health_check", "api.openapi_document", "api.docs"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_ID = 2**63 - 1  # ids and cursors beyond a signed 64-bit integer cannot exist


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(downloads.bp)
    app.register_blueprint(code.bp)  # flask-smorest's; its Api registers it once #23 lands
    throttle.init_app(app)
    app.before_request(_require_token)
    app.before_request(_refuse_unknown_query_params)
    app.register_error_handler(ParseqError, _parseq_error)
    app.register_error_handler(HTTPException, _http_error)


def _require_token() -> None:
    """Authenticate API requests; a read-only token may only read."""
    if not request.path.startswith(PREFIX + "/") or request.endpoint in PUBLIC_ENDPOINTS:
        return
    write = request.method not in SAFE_METHODS
    if not write and "Authorization" not in request.headers and _admin_logged_in():
        return  # the admin's own pages link to file downloads
    header = request.headers.get("Authorization")
    if header is None:  # no guess at a token: nothing to throttle
        tokens.authenticate(header, write=write)
        return
    # Failed tokens count per client address, as failed admin logins do.
    address_key = throttle.key("token-address", request.remote_addr or "unknown")
    throttle.current().check(address_key)
    try:
        tokens.authenticate(header, write=write)
    except Unauthorized:
        throttle.current().fail(address_key)
        raise


def _refuse_unknown_query_params() -> None:
    """A misspelt filter (``?staus=error``) is a 400, not silently ignored."""
    if request.url_rule is None or not request.path.startswith(PREFIX + "/"):
        return
    method = "get" if request.method == "HEAD" else request.method
    allowed = openapi.query_params(request.url_rule.rule, method)
    unknown = set(request.args) - (allowed or frozenset())
    if allowed is not None and unknown:
        names = ", ".join(repr(n) for n in sorted(unknown))
        raise BadRequest(f"unknown query parameter(s): {names}")


def _admin_logged_in() -> bool:
    if getattr(current_app, "login_manager", None) is None:
        return False
    from flask_login import current_user

    return bool(current_user.is_authenticated)


def _error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, **extra}}), status


def _parseq_error(exc: ParseqError) -> tuple[Response, int]:
    resp = jsonify({"error": exc.to_dict()})
    if isinstance(exc, TooManyRequests):
        resp.headers["Retry-After"] = str(exc.retry_after_s)
    return resp, exc.status_code


def _http_error(exc: HTTPException) -> Any:
    if not request.path.startswith(PREFIX):
        return exc.get_response()  # admin and other HTML pages keep Flask's pages
    code = (exc.name or "error").lower().replace(" ", "_")
    resp, status = _error(exc.code or 500, code, exc.description or exc.name)
    for name, value in exc.get_headers():  # e.g. Allow on a 405
        if name.lower() != "content-type":
            resp.headers[name] = value
    return resp, status


def _json_body() -> dict[str, Any]:
    """The request's JSON object; an empty body counts as ``{}``."""
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise BadRequest("request body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _config() -> Any:
    return current_app.extensions["parseq"].config


def run_json(run: Run) -> dict[str, Any]:
    """A run as the API shows it, with its own URL and a download URL per file."""
    return {
        **run.to_dict(),
        "url": f"{PREFIX}/runs/{run.id}",
        "files": downloads.files_json(run),
    }


def parser_json(parser: Parser, last_run: bool = False) -> dict[str, Any]:
    """A parser as the API shows it; in detail (``last_run``) also with its last run, its next
    5 fire times and its last skipped occurrences."""
    body = {**parser.to_dict(), "next_run_at": iso(schedules.next_run_at(parser))}
    if last_run:
        latest = db.session.execute(
            db.select(Run).where(Run.parser_id == parser.id).order_by(Run.id.desc()).limit(1)
        ).scalar_one_or_none()
        skips = db.session.execute(
            db.select(ScheduleSkip)
            .where(ScheduleSkip.parser_id == parser.id)
            .order_by(ScheduleSkip.scheduled_for.desc())
            .limit(5)
        ).scalars()
        upcoming = schedules.next_fire_times(parser, count=5)
        body["next_fire_times"] = [t.isoformat() for t in upcoming]
        body["skipped"] = [s.to_dict() for s in skips]
        body["last_run"] = run_json(latest) if latest else None
    return body


# --- parsers ----------------------------------------------------------------------------------


@bp.get("/parsers")
def list_parsers() -> Response:
    parsers = db.session.execute(db.select(Parser).order_by(Parser.name)).scalars()
    return jsonify({"parsers": [parser_json(p) for p in parsers]})


@bp.post("/parsers")
def create_parser() -> tuple[Response, int, dict[str, str]]:
    """Register a parser; secrets are accepted here and never shown again."""
    values = schemas.check_parser_body(_json_body(), _config(), None)
    parser = schemas.apply_parser_values(Parser(), values)
    body = {**parser_json(parser, True), "warnings": parser_warnings(_config(), parser)}
    return jsonify(body), 201, {"Location": f"{PREFIX}/parsers/{parser.name}"}


@bp.get("/parsers/<name>")
def get_parser(name: str) -> Response:
    return jsonify(parser_json(runs.get_parser(name), last_run=True))


@bp.patch("/parsers/<name>")
def update_parser(name: str) -> Response:
    """Change the given fields only; ``secrets`` are merged (a null value removes one)."""
    parser = runs.get_parser(name)
    values = schemas.check_parser_body(_json_body(), _config(), parser)
    parser = schemas.apply_parser_values(parser, values)
    return jsonify({**parser_json(parser, True), "warnings": parser_warnings(_config(), parser)})


@bp.delete("/parsers/<name>")
def delete_parser(name: str) -> Response:
    """Delete a parser with its runs and their stored files. Refused (409) while a run is
    pending or running, unless ``?cascade=true``: then those runs are cancelled first."""
    parser = runs.get_parser(name)
    cascade = _bool_arg("cascade")
    count = runs.delete_parser(parser, current_app.extensions["parseq"].storage, cascade)
    return jsonify({"deleted": name, "runs_deleted": count})


@bp.post("/parsers/<name>/enable")
def enable_parser(name: str) -> Response:
    return _set_enabled(name, True)


@bp.post("/parsers/<name>/disable")
def disable_parser(name: str) -> Response:
    return _set_enabled(name, False)


def _set_enabled(name: str, enabled: bool) -> Response:
    parser = runs.get_parser(name)
    parser.enabled = enabled
    db.session.commit()
    return jsonify(parser_json(parser, last_run=True))


# --- runs -------------------------------------------------------------------------------------


@bp.post("/parsers/<name>/runs")
def create_run(name: str) -> tuple[Response, int, dict[str, str]]:
    """Queue a run; body ``{"args": {...}, "positional": [...]}``. 202 with the run and its
    ``Location``; with ``?wait=S``, 200 with the finished run if it ends within S seconds."""
    parser = runs.get_parser(name)
    wait_s = _wait_arg()
    body = _json_body()
    unknown = set(body) - {"args", "positional"}
    if unknown:
        raise BadRequest(f"unknown field(s) in body: {', '.join(sorted(unknown))}")
    run = runs.create_run(
        parser,
        runs.check_args(body.get("args")),
        RunTrigger.API,
        # Absent: the parser's default positionals; null is no list.
        positional=check_positional(body["positional"]) if "positional" in body else None,
    )
    if wait_s:
        run = _wait_until_final(run.id, wait_s)
    status = 200 if run.status.is_final else 202
    return jsonify(run_json(run)), status, {"Location": f"{PREFIX}/runs/{run.id}"}


def _wait_arg() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    limit = _config().max_wait_s
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest("query parameter 'wait' must be a number of seconds") from None
    if not 0 <= value <= limit:  # also refuses nan and inf
        raise BadRequest(f"query parameter 'wait' must be between 0 and {limit:g} seconds")
    return value


def _wait_until_final(run_id: int, wait_s: float) -> Run:
    """Poll the run (a worker elsewhere commits it) until it is final or ``wait_s`` passes."""
    deadline = time.monotonic() + wait_s
    pause = 0.05
    while True:
        db.session.rollback()  # end the transaction: the next read sees the worker's commits
        db.session.expire_all()  # and reload a run create_run kept loaded
        run = runs.get_run(run_id)
        left = deadline - time.monotonic()
        if run.status.is_final or left <= 0:
            return run
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, 0.5)


def _int_arg(name: str, default: int | None = None, minimum: int = 1) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer") from None
    if not minimum <= value <= MAX_ID:
        raise BadRequest(f"query parameter {name!r} must be from {minimum} to {MAX_ID}")
    return value


def _bool_arg(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return False
    raw = raw.lower()
    if raw in ("0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadRequest(f"query parameter {name!r} must be true or false")


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+"))  # a raw '+' in a URL is a space
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an ISO 8601 date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _enum_arg(name: str, enum: Any) -> Any:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return enum(raw)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise BadRequest(f"{name} must be one of: {allowed}") from None


@bp.get("/runs")
def list_runs() -> Response:
    """Runs newest first, filtered by ``parser``, ``status``, ``trigger``, ``since``/``until``
    (queued time); page with ``limit`` and the previous page's ``next_cursor``.

    Keyset pagination on the id: with a parser or status filter the database walks the
    ``(parser_id, id)`` or ``(status, id)`` index, so a page costs the same at any depth.
    """
    config = _config()
    limit = min(_int_arg("limit", config.page_size) or 1, config.max_page_size)
    cursor = _int_arg("cursor")
    query = (
        db.select(Run)
        .options(selectinload(Run.files), joinedload(Run.parser))  # no query per run
        .order_by(Run.id.desc())
        .limit(limit + 1)
    )
    if (name := request.args.get("parser")) is not None:
        query = query.where(Run.parser_id == runs.get_parser(name).id)
    if status := _enum_arg("status", RunStatus):
        query = query.where(Run.status == status)
    if trigger := _enum_arg("trigger", RunTrigger):
        query = query.where(Run.trigger == trigger)
    if since := _time_arg("since"):
        query = query.where(Run.queued_at >= since)
    if until := _time_arg("until"):
        query = query.where(Run.queued_at < until)
    if cursor is not None:
        query = query.where(Run.id < cursor)
    items = list(db.session.execute(query).scalars())
    page, more = items[:limit], len(items) > limit
    return jsonify(
        {"runs": [run_json(r) for r in page], "next_cursor": page[-1].id if more else None}
    )


@bp.get("/runs/<int:run_id>")
def get_run(run_id: int) -> Response:
    run = runs.get_run(run_id)
    return jsonify({**run_json(run), "notifications": notify.deliveries_json(run.id)})


@bp.post("/runs/<int:run_id>/cancel")
def cancel_run(run_id: int) -> Response:
    """Cancel a pending or running run; 409 when it already ended."""
    return jsonify(run_json(runs.cancel_run(runs.get_run(run_id))))


# --- health and documentation -----------------------------------------------------------------


@bp.get("/health")
def health_check() -> tuple[Response, int]:
    """Database, broker and storage (with latency), workers, queue depth and the host."""
    body, status = health.report(current_app._get_current_object())
    return jsonify(body), status


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return jsonify(openapi.document(_config().max_wait_s))


@bp.get("/docs")
def docs() -> Response:
    # A page that renders openapi.json in the browser (parseq/web/templates/parseq/api_docs.html).
    return Response(
        render_template("parseq/api_docs.html"), content_type="text/html; charset=utf-8"
    )
