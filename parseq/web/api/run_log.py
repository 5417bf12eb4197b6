"""``GET /api/v1/runs/<id>/log``: what a run printed so far (:mod:`parseq.services.livelog`),
or followed as it grows."""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Blueprint, Response, request, stream_with_context

from parseq.core.errors import BadRequest
from parseq.db.models import Run, db
from parseq.services import runs
from parseq.services.livelog import read

bp = Blueprint("livelog", __name__, url_prefix="/api/v1")
#: How often a follower looks for new lines, in seconds.
FOLLOW_POLL_S = 0.5


def _offset_arg() -> int:
    raw = request.args.get("offset", "0")
    if not raw.isdigit() or int(raw) >= 2**62:
        raise BadRequest("query parameter 'offset' must be a byte offset (an integer >= 0)")
    return int(raw)


def _follow_arg() -> bool:
    raw = request.args.get("follow", "0").lower()
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise BadRequest("query parameter 'follow' must be true or false")
    return raw in ("1", "true", "yes")


@bp.get("/runs/<int:run_id>/log")
def run_log(run_id: int) -> Response:
    """What the run printed (secrets masked); ``?follow=1`` streams new lines until it ends."""
    run = runs.get_run(run_id)
    offset, follow = _offset_arg(), _follow_arg()
    if not follow:
        data, end = read(run, offset)
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
        data, offset = read(run, offset)
        if data:
            yield data
        elif run.status.is_final:
            return
        time.sleep(FOLLOW_POLL_S)
