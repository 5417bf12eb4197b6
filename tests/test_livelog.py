"""Live logs: a running run's output over the API (plain and followed) and on the admin run
page, from a worker in another process (PostgreSQL + RabbitMQ), secrets masked."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db
from parseq.db.notify_models import RunLogChunk
from parseq.services import runs
from tests.conftest import add_parser, admin_client, api_client, running, wait_for_run

SECRET = "tok-9f8e7d6c5b4a"


def _status(run_id: int) -> RunStatus:
    db.session.rollback()
    db.session.expire_all()
    return db.session.get(Run, run_id).status


def _poll_log(client: Any, run_id: int, needle: bytes, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        _status(run_id)  # requests share the test's session: see the worker's commits
        resp = client.get(f"/api/v1/runs/{run_id}/log")
        if needle in resp.data or time.monotonic() > deadline:
            return resp
        time.sleep(0.1)


@pytest.mark.services
def test_a_worker_process_log_is_live_over_the_api_and_in_the_admin(
    services_app: Flask, worker_process: Any
) -> None:
    name = f"ticker-{uuid.uuid4().hex[:8]}"
    client = api_client(services_app)
    with services_app.app_context():
        parser = add_parser(name, "ticker.py", secrets={"TOKEN": SECRET})
        run = runs.create_run(parser, {"ticks": 40, "pause": 0.2})
        resp = _poll_log(client, run.id, b"tick 2")
        assert _status(run.id) is RunStatus.RUNNING  # seen before the run ended
        assert resp.status_code == 200
        assert resp.content_type == "text/plain; charset=utf-8"
        assert resp.headers["X-Parseq-Run-Status"] == "running"
        assert b"token is ***" in resp.data and SECRET.encode() not in resp.data
        assert resp.data.startswith(b"token is ***\ntick 0\ntick 1\n")
        # Reading on from the offset it gave returns only what came after.
        offset = int(resp.headers["X-Parseq-Log-Offset"])
        more = _poll_log(client, run.id, b"tick", timeout_s=0)
        assert len(more.data) >= offset
        _status(run.id)
        after = client.get(f"/api/v1/runs/{run.id}/log?offset={offset}")
        assert not after.data.startswith(b"token")

        _status(run.id)
        page = admin_client(services_app).get(f"/admin/runs/details/?id={run.id}")
        html = page.get_data(as_text=True)
        assert 'id="live-log"' in html and "tick 1" in html
        assert SECRET not in html

        # Followed: the first lines arrive while it runs, the stream ends with the run.
        followed = client.get(f"/api/v1/runs/{run.id}/log?follow=1", buffered=False)
        pieces = iter(followed.response)
        first = next(pieces)
        assert first.startswith(b"token is ***")
        assert _status(run.id) is RunStatus.RUNNING
        rest = b"".join(pieces)
        assert _status(run.id) is RunStatus.COMPLETED
        whole = first + rest
        assert whole.count(b"tick 39\n") == 1 and SECRET.encode() not in whole
        assert wait_for_run(run.id).status is RunStatus.COMPLETED
        # Ended: the stored log answers, the live copy is gone.
        _status(run.id)
        done = client.get(f"/api/v1/runs/{run.id}/log")
        assert done.data == whole
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            db.session.rollback()
            left = db.session.execute(
                db.select(RunLogChunk.id).where(RunLogChunk.run_id == run.id)
            ).first()
            if left is None:
                break
            time.sleep(0.1)
        assert left is None


def test_live_log_is_capped_and_bad_input_is_a_400(make_config: Callable[..., Config]) -> None:
    config = make_config(heartbeat_interval_s=0.2, live_log_max_bytes=40)
    with running(config) as app:
        client = api_client(app)
        parser = add_parser("capped", "ticker.py")
        run = runs.create_run(parser, {"ticks": 30, "pause": 0.1})
        resp = _poll_log(client, run.id, b"live log cut")
        assert _status(run.id) is RunStatus.RUNNING
        assert resp.data.startswith(b"tick 0\ntick 1\n")
        assert b"[parseq: live log cut at 40 bytes" in resp.data
        assert len(resp.data.split(b"\n[parseq")[0]) == 40
        for query in ("offset=-1", "offset=x", "follow=maybe", "tail=3"):
            bad = client.get(f"/api/v1/runs/{run.id}/log?{query}")
            assert bad.status_code == 400, query
            assert bad.json["error"]["code"] == "bad_request"
        assert client.get("/api/v1/runs/999999/log").status_code == 404
        assert app.test_client().get(f"/api/v1/runs/{run.id}/log").status_code == 401
        wait_for_run(run.id)
