"""The REST API under ``/api/v1``: parsers, runs and their files, as JSON.

Every error answers ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import mimetypes
import time
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, jsonify, request, stream_with_context
from werkzeug.exceptions import HTTPException

from parseq import runs
from parseq.errors import BadRequest, NotFound, ParseqError
from parseq.models import Run, RunStatus, RunTrigger, db

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_error_handler(ParseqError, _parseq_error)
    app.register_error_handler(HTTPException, _http_error)


def _error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, **extra}}), status


def _parseq_error(exc: ParseqError) -> tuple[Response, int]:
    return jsonify({"error": exc.to_dict()}), exc.status_code


def _http_error(exc: HTTPException) -> Any:
    if not request.path.startswith(bp.url_prefix or "/api"):
        return exc.get_response()  # admin and other HTML pages keep Flask's pages
    code = (exc.name or "error").lower().replace(" ", "_")
    return _error(exc.code or 500, code, exc.description or exc.name)


def _json_body() -> dict[str, Any]:
    """The request's JSON object; an empty body counts as ``{}``."""
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("request body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


@bp.get("/parsers")
def list_parsers() -> Response:
    from parseq.models import Parser

    parsers = db.session.execute(db.select(Parser).order_by(Parser.name)).scalars()
    return jsonify({"parsers": [p.to_dict() for p in parsers]})


@bp.get("/parsers/<name>")
def get_parser(name: str) -> Response:
    """One parser with its schedule, its next 5 fire times, and its last skipped occurrences."""
    from parseq.models import ScheduleSkip
    from parseq.scheduler import next_fire_times

    parser = runs.get_parser(name)
    skips = db.session.execute(
        db.select(ScheduleSkip)
        .where(ScheduleSkip.parser_id == parser.id)
        .order_by(ScheduleSkip.scheduled_for.desc())
        .limit(5)
    ).scalars()
    return jsonify(
        {
            **parser.to_dict(),
            "next_fire_times": [t.isoformat() for t in next_fire_times(parser, count=5)],
            "skipped": [s.to_dict() for s in skips],
        }
    )


@bp.post("/parsers/<name>/runs")
def create_run(name: str) -> tuple[Response, int, dict[str, str]]:
    """Queue a run; body ``{"args": {...}}``. Answers 202 with the run and its ``Location``."""
    parser = runs.get_parser(name)
    body = _json_body()
    unknown = set(body) - {"args"}
    if unknown:
        raise BadRequest(f"unknown field(s) in body: {', '.join(sorted(unknown))}")
    run = runs.create_run(parser, runs.check_args(body.get("args")), RunTrigger.API)
    return jsonify(run.to_dict()), 202, {"Location": f"{bp.url_prefix}/runs/{run.id}"}


def _int_arg(name: str, default: int | None = None, minimum: int = 1) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer") from None
    if value < minimum:
        raise BadRequest(f"query parameter {name!r} must be >= {minimum}")
    return value


@bp.get("/runs")
def list_runs() -> Response:
    """Runs newest first; filter by ``parser`` and ``status``; page with ``limit`` and the
    ``next_cursor`` of the previous page (keyset pagination: fast at any depth)."""
    config = current_app.extensions["parseq"].config
    limit = min(_int_arg("limit", config.page_size) or 1, config.max_page_size)
    cursor = _int_arg("cursor")
    query = db.select(Run).order_by(Run.id.desc()).limit(limit + 1)
    if name := request.args.get("parser"):
        query = query.where(Run.parser_id == runs.get_parser(name).id)
    if status := request.args.get("status"):
        try:
            query = query.where(Run.status == RunStatus(status))
        except ValueError:
            allowed = ", ".join(s.value for s in RunStatus)
            raise BadRequest(f"status must be one of: {allowed}") from None
    if cursor is not None:
        query = query.where(Run.id < cursor)
    items = list(db.session.execute(query).scalars())
    page, more = items[:limit], len(items) > limit
    return jsonify(
        {"runs": [r.to_dict() for r in page], "next_cursor": page[-1].id if more else None}
    )


@bp.get("/runs/<int:run_id>")
def get_run(run_id: int) -> Response:
    return jsonify(runs.get_run(run_id).to_dict())


@bp.post("/runs/<int:run_id>/cancel")
def cancel_run(run_id: int) -> Response:
    """Cancel a pending or running run; 409 when it already ended."""
    return jsonify(runs.cancel_run(runs.get_run(run_id)).to_dict())


@bp.get("/runs/<int:run_id>/files")
def list_files(run_id: int) -> Response:
    run = runs.get_run(run_id)
    return jsonify(
        {
            "files": [
                {**f.to_dict(), "url": f"{bp.url_prefix}/runs/{run.id}/files/{f.name}"}
                for f in run.files
            ]
        }
    )


@bp.get("/runs/<int:run_id>/files/<path:name>", merge_slashes=False)
def download_file(run_id: int, name: str) -> Response:
    """Stream a stored file. Names are looked up on the run's records only, so no path trick
    can reach the filesystem or another run's objects."""
    return file_response(runs.get_run(run_id), name)


def file_response(run: Run, name: str) -> Response:
    """Stream one of the run's stored files (the API's and the admin's downloads)."""
    stored = run.file(name)
    if stored is None:
        raise NotFound(f"run {run.id} has no file {name!r}", run_id=run.id)
    storage = current_app.extensions["parseq"].storage
    chunks = storage.iter_bytes(stored.storage_key)
    filename = stored.name.rsplit("/", 1)[-1]
    mimetype = _content_type(filename)
    return Response(
        stream_with_context(chunks),
        content_type=mimetype,
        headers={
            "Content-Length": str(stored.size),
            "Content-Disposition": _content_disposition(filename),
            "ETag": f'"{stored.sha256}"',
        },
    )


def _content_type(filename: str) -> str:
    if filename.endswith((".txt", ".log")):
        return "text/plain; charset=utf-8"
    if filename.endswith(".ipynb"):
        return "application/x-ipynb+json"
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _content_disposition(filename: str) -> str:
    from urllib.parse import quote

    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


@bp.get("/health")
def health() -> tuple[Response, int]:
    """Whether the database and storage answer, with their latency in ms."""
    checks: dict[str, dict[str, Any]] = {}
    state = current_app.extensions["parseq"]
    for name, probe in (
        ("database", lambda: db.session.execute(sa.text("SELECT 1"))),
        ("storage", state.storage.check),
    ):
        started = time.perf_counter()
        try:
            probe()
            checks[name] = {"ok": True}
        except Exception as exc:
            checks[name] = {"ok": False, "error": str(exc)}
        checks[name]["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    ok = all(c["ok"] for c in checks.values())
    return jsonify({"status": "ok" if ok else "degraded", "checks": checks}), 200 if ok else 503
