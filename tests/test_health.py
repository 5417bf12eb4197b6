"""``GET /api/v1/health``: dependencies with latency, workers, queue depth, host; 503 when down."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.core.errors import ConfigError
from parseq.db.models import db, utcnow
from parseq.db.workers import Worker, beat
from parseq.services import runs
from parseq.web.app import create_app, init_db
from parseq.worker.execution import WORKER_ID
from parseq.worker.heartbeat import Heartbeat
from tests.conftest import (
    add_parser,
    api_client,
    delete_rabbit_queues,
    free_port,
    scratch_database,
    start_worker_process,
    stop_process,
)


def _health(app: Flask) -> tuple[int, dict]:
    resp = api_client(app, auth=False).get("/api/v1/health")
    assert resp.is_json
    return resp.status_code, resp.json


def test_embedded_health_reports_everything(embedded_app: Flask) -> None:
    status, body = _health(embedded_app)
    assert status == 200
    assert body["status"] == "ok"
    for name in ("database", "broker", "storage"):
        assert body["checks"][name]["ok"] is True
        assert body["checks"][name]["latency_ms"] >= 0
    assert body["queue"] == {"name": "parseq", "depth": 0}
    me = next(w for w in body["workers"] if w["id"] == WORKER_ID)
    assert me["alive"] is True and me["threads"] == 2 and me["queue"] == "parseq"
    assert body["workers_alive"] >= 1
    host = body["host"]
    assert host["cpu_count"] >= 1 and len(host["load_avg"]) == 3
    assert 0 < host["memory_available_bytes"] <= host["memory_total_bytes"]
    assert 0 < host["disk_free_bytes"] <= host["disk_total_bytes"]


def test_memory_queue_depth_counts_waiting_runs(sqlite_app: Flask) -> None:
    parser = add_parser("echo", "echo_env.py")
    runs.create_run(parser)
    runs.create_run(parser)
    _status, body = _health(sqlite_app)
    assert body["queue"]["depth"] == 2
    assert body["workers"] == []  # no worker in this process


def test_broker_down_is_503(make_config: Callable[..., Config]) -> None:
    app = create_app(make_config(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"))
    init_db(app)
    status, body = _health(app)
    assert status == 503
    assert body["status"] == "down"
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["broker"]["error"]
    assert body["checks"]["database"]["ok"] is True
    with app.app_context():
        db.engine.dispose()


def test_storage_down_is_503(make_config: Callable[..., Config]) -> None:
    app = create_app(
        make_config(
            storage_url="s3://nowhere/x",
            s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
            s3_access_key_id="k",
            s3_secret_access_key="s",
        )
    )
    init_db(app)
    status, body = _health(app)
    assert status == 503
    assert body["checks"]["storage"]["ok"] is False
    with app.app_context():
        db.engine.dispose()


def test_stale_workers_show_as_dead_and_stopped_ones_leave(sqlite_app: Flask) -> None:
    old = utcnow() - timedelta(minutes=10)  # dead, not yet pruned (PARSEQ_WORKER_PRUNE_AFTER_S)
    beat("elsewhere:1", "parseq", 4, old)
    db.session.execute(db.update(Worker).values(last_heartbeat_at=old))
    db.session.commit()
    _status, body = _health(sqlite_app)
    assert [(w["id"], w["alive"]) for w in body["workers"]] == [("elsewhere:1", False)]

    heartbeat = Heartbeat(sqlite_app, "here:2", "parseq", 1)
    heartbeat.start()
    try:
        deadline = utcnow() + timedelta(seconds=10)
        while db.session.get(Worker, "here:2") is None and utcnow() < deadline:
            db.session.rollback()
            time.sleep(0.05)
        assert db.session.get(Worker, "here:2") is not None
    finally:
        heartbeat.stop()
    db.session.rollback()
    db.session.expire_all()
    assert db.session.get(Worker, "here:2") is None


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own: pruning must not touch the session's workers."""
    with scratch_database(f"parseq_prune_{uuid.uuid4().hex[:10]}") as url:
        yield url


def _listed(app: Flask) -> dict[str, bool]:
    return {w["id"]: w["alive"] for w in _health(app)[1]["workers"]}


def test_a_killed_worker_is_pruned_after_the_configured_time(
    services_env: dict[str, str], own_pg_url: str, tmp_path: Path
) -> None:
    queue = f"parseq_prune_{uuid.uuid4().hex[:8]}"
    env = {
        **services_env,
        "PARSEQ_DATABASE_URL": own_pg_url,
        "PARSEQ_QUEUE_NAME": queue,
        "PARSEQ_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
        "PARSEQ_WORKER_PRUNE_AFTER_S": "5",
    }
    app = create_app(Config.from_env(environ=env))
    init_db(app)
    killed = start_worker_process(env, tmp_path / "killed.log", threads=1)
    killed_id = f"{socket.gethostname()}:{killed.pid}"
    try:
        with app.app_context():
            assert _listed(app) == {killed_id: True}
            os.kill(killed.pid, signal.SIGKILL)
            killed.wait()
            killed_at = time.monotonic()
            time.sleep(2)  # past 3 heartbeat intervals: dead, still listed
            assert _listed(app) == {killed_id: False}
            time.sleep(killed_at + 5.5 - time.monotonic())  # past PARSEQ_WORKER_PRUNE_AFTER_S
            assert _listed(app) == {}
            assert db.session.get(Worker, killed_id) is not None  # no live worker pruned it yet
            db.session.rollback()

            live = start_worker_process(env, tmp_path / "live.log", threads=1)
            try:  # a live worker's heartbeat deletes the dead one's row
                assert list(_listed(app)) == [f"{socket.gethostname()}:{live.pid}"]
                db.session.rollback()
                assert db.session.get(Worker, killed_id) is None
            finally:
                stop_process(live)
            db.engine.dispose()
    finally:
        if killed.poll() is None:
            killed.kill()
        delete_rabbit_queues(queue)


def test_prune_after_must_be_off_or_longer_than_the_heartbeat(
    make_config: Callable[..., Config],
) -> None:
    assert make_config(worker_prune_after_s=0).worker_prune_after_s == 0
    for bad in (-1, 5):
        with pytest.raises(ConfigError, match="PARSEQ_WORKER_PRUNE_AFTER_S"):
            make_config(worker_prune_after_s=bad)
