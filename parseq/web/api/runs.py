"""``/api/v1`` runs: start one (``?wait`` for the synchronous form), list, read, cancel, and
read its log live."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, stream_with_context
from sqlalchemy.orm import joinedload, selectinload

from parseq.db.models import Run, RunTrigger, db
from parseq.services import livelog, runs
from parseq.web.api.base import api_blueprint, auth_errors
from parseq.web.api.bodies import run_json
from parseq.web.api.schemas import (
    LogQuery,
    RunCreateSchema,
    RunListQuery,
    RunListSchema,
    RunSchema,
    WaitQuery,
)

bp = api_blueprint("api_runs", __name__, "Start, list, follow and cancel runs")
#: How often a follower of a live log looks for new lines, in seconds.
FOLLOW_POLL_S = 0.5
TEXT = {"text/plain": {"schema": {"type": "string"}}}
#: Where a run's id leads (OpenAPI links).
RUN_LINKS = {
    "get_run": "run_id",
    "cancel_run": "run_id",
    "run_log": "run_id",
    "list_files": "run_id",
}


@bp.post("/parsers/<name>/runs")
@bp.arguments(WaitQuery, location="query")
@bp.arguments(RunCreateSchema, required=False)
@bp.response(202, RunSchema, description="queued (or still running when wait ran out)")
@bp.alt_response(200, schema=RunSchema, description="it finished within wait")
@bp.errors(*auth_errors(400, 404, 422, 503, write=True))
@bp.links((200, 202), "id", RUN_LINKS)
def create_run(
    query: dict[str, Any], body: dict[str, Any], name: str
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start a run: ``args`` overlaid on the parser's defaults, ``positional`` after them.
    With ``?wait=S``, answer 200 with the finished run if it ends within S seconds."""
    parser = runs.get_parser(name)
    run = runs.create_run(
        parser,
        runs.check_args(body.get("args")),
        RunTrigger.API,
        positional=body.get("positional"),  # absent: the parser's default positionals
    )
    if query.get("wait"):
        run = _wait_until_final(run.id, query["wait"])
    status = 200 if run.status.is_final else 202
    return run_json(run), status, {"Location": f"{bp.url_prefix}/runs/{run.id}"}


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


@bp.get("/runs")
@bp.arguments(RunListQuery, location="query")
@bp.response(200, RunListSchema)
@bp.errors(*auth_errors(400, 404))
def list_runs(query: dict[str, Any]) -> dict[str, Any]:
    """Runs newest first, filtered by parser, status, trigger and queued time; page with
    ``limit`` and the previous page's ``next_cursor``.

    Keyset pagination on the id: with a parser or status filter the database walks the
    ``(parser_id, id)`` or ``(status, id)`` index, so a page costs the same at any depth.
    """
    config = current_app.extensions["parseq"].config
    limit = min(query.get("limit", config.page_size), config.max_page_size)
    stmt = (
        db.select(Run)
        .options(selectinload(Run.files), joinedload(Run.parser))  # no query per run
        .order_by(Run.id.desc())
        .limit(limit + 1)
    )
    if "parser" in query:
        stmt = stmt.where(Run.parser_id == runs.get_parser(query["parser"]).id)
    filters = {
        "status": lambda v: Run.status == v,
        "trigger": lambda v: Run.trigger == v,
        "since": lambda v: Run.queued_at >= v,
        "until": lambda v: Run.queued_at < v,
        "cursor": lambda v: Run.id < v,
    }
    for key, condition in filters.items():
        if key in query:
            stmt = stmt.where(condition(query[key]))
    items = list(db.session.execute(stmt).scalars())
    page, more = items[:limit], len(items) > limit
    return {"runs": [run_json(r) for r in page], "next_cursor": page[-1].id if more else None}


@bp.get("/runs/<int:run_id>")
@bp.response(200, RunSchema)
@bp.errors(*auth_errors(404))
def get_run(run_id: int) -> dict[str, Any]:
    """A run with its progress, files and notifications."""
    return run_json(runs.get_run(run_id), notifications=True)


@bp.post("/runs/<int:run_id>/cancel")
@bp.response(200, RunSchema)
@bp.errors(*auth_errors(404, 409, write=True))
def cancel_run(run_id: int) -> dict[str, Any]:
    """Cancel a pending or running run; 409 when it has ended already."""
    return run_json(runs.cancel_run(runs.get_run(run_id)))


@bp.get("/runs/<int:run_id>/log")
@bp.arguments(LogQuery, location="query")
@bp.doc(
    responses={
        "200": {
            "description": "the log from offset (secrets masked). X-Parseq-Log-Offset: where "
            "to read on; with follow, streamed until the run ends",
            "content": TEXT,
            "headers": {
                "X-Parseq-Log-Offset": {"schema": {"type": "integer"}},
                "X-Parseq-Run-Status": {"schema": {"type": "string"}},
            },
        }
    }
)
@bp.errors(*auth_errors(400, 404, 503))
def run_log(query: dict[str, Any], run_id: int) -> Response:
    """What the run printed so far; live while it runs."""
    run = runs.get_run(run_id)
    offset = query.get("offset", 0)
    if not query.get("follow"):
        data, end = livelog.read(run, offset)
        headers = {"X-Parseq-Log-Offset": str(end), "X-Parseq-Run-Status": run.status.value}
        return Response(data, content_type="text/plain; charset=utf-8", headers=headers)
    return Response(
        stream_with_context(_follow(run_id, offset)),
        content_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _follow(run_id: int, offset: int) -> Iterator[bytes]:
    """New log bytes as they arrive (chunked), until the run has ended and all is sent."""
    while True:
        db.session.rollback()  # a fresh snapshot: the worker commits elsewhere
        db.session.expire_all()
        run = db.session.get(Run, run_id)
        if run is None:
            return
        data, offset = livelog.read(run, offset)
        if data:
            yield data
        elif run.status.is_final:
            return
        time.sleep(FOLLOW_POLL_S)
