"""``GET /api/v1/health``: dependencies with latency, workers, queue depth, host; 503 when down."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from flask import Flask

from parseq import runs
from parseq.app import create_app, init_db
from parseq.config import Config
from parseq.execution import WORKER_ID
from parseq.models import db, utcnow
from parseq.workers import Heartbeat, Worker, beat
from tests.conftest import add_parser, api_client, free_port


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
    old = utcnow() - timedelta(hours=1)
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
