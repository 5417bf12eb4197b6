"""The REST API on real services: PostgreSQL + RabbitMQ + a ``parseq worker`` process + S3
(moto's server over HTTP), and Redis for queue depth."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import db
from parseq.services import runs
from parseq.web.app import create_app
from tests.conftest import REDIS_URL, add_parser, api_client, delete_rabbit_queues

pytestmark = pytest.mark.services

BLOB = bytes(i % 251 for i in range(700_000))  # > one S3 download chunk


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def blob_run(services_app: Flask, worker_process) -> int:  # type: ignore[no-untyped-def]
    """A completed run on the worker with output.txt (JSON Lines) and blob.bin in S3."""
    client = api_client(services_app)
    with services_app.app_context():
        name = _unique("items")
        add_parser(name, "items.py")
    resp = client.post(
        f"/api/v1/parsers/{name}/runs?wait=30", json={"args": {"blob_bytes": len(BLOB)}}
    )
    assert resp.status_code == 200, resp.json
    return resp.json["id"]


def test_sync_run_on_rabbitmq_returns_the_finished_run_and_its_output_link(
    services_app: Flask, worker_process
) -> None:  # type: ignore[no-untyped-def]
    client = api_client(services_app)
    with services_app.app_context():
        name = _unique("echo")
        add_parser(name, "echo_env.py")
    resp = client.post(f"/api/v1/parsers/{name}/runs?wait=30", json={"args": {"who": "sync"}})
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["status"] == "completed"
    assert body["worker_id"].endswith(f":{worker_process.pid}")
    link = next(f["url"] for f in body["files"] if f["name"] == "output.txt")
    assert client.get(link).data == b"hello sync\n"


def test_s3_download_is_streamed_with_exact_bytes_and_ranges(
    services_app: Flask, blob_run: int
) -> None:
    client = api_client(services_app)
    url = f"/api/v1/runs/{blob_run}/files/blob.bin"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.data == BLOB
    part = client.get(url, headers={"Range": "bytes=300000-300099"})
    assert part.status_code == 206
    assert part.data == BLOB[300_000:300_100]
    assert part.headers["Content-Range"] == f"bytes 300000-300099/{len(BLOB)}"
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.data == BLOB[-10:]
    assert client.get(url, headers={"Range": f"bytes={len(BLOB)}-"}).status_code == 416
    items = client.get(f"/api/v1/runs/{blob_run}/files/output.txt?format=json").json["items"]
    assert items == [{"id": i, "name": f"item {i}"} for i in range(3)]


@pytest.fixture(scope="module")
def presign_app(services_env: dict[str, str]) -> Iterator[Flask]:
    app = create_app(Config.from_env(environ={**services_env, "PARSEQ_S3_PRESIGN": "true"}))
    yield app
    with app.app_context():
        db.engine.dispose()


def test_s3_presigned_redirect_serves_exact_bytes_and_ranges(
    presign_app: Flask, blob_run: int, services_env: dict[str, str]
) -> None:
    client = api_client(presign_app)
    resp = client.get(f"/api/v1/runs/{blob_run}/files/blob.bin")
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(services_env["PARSEQ_S3_ENDPOINT_URL"])
    assert "Signature" in location or "X-Amz-Signature" in location
    fetched = requests.get(location, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == BLOB
    assert 'filename="blob.bin"' in fetched.headers["Content-Disposition"]
    ranged = requests.get(location, headers={"Range": "bytes=123-456"}, timeout=10)
    assert ranged.status_code == 206
    assert ranged.content == BLOB[123:457]
    # An empty file has no object to sign a URL for: it is served, empty, by the API.
    empty = client.get(f"/api/v1/runs/{blob_run}/files/run.log")
    assert (empty.status_code, empty.data) == (200, b"")
    # Without a token the API still refuses before it would hand out a URL.
    assert (
        api_client(presign_app, auth=False)
        .get(f"/api/v1/runs/{blob_run}/files/blob.bin")
        .status_code
        == 401
    )


def test_health_on_services_lists_the_worker_and_the_rabbitmq_queue(
    services_app: Flask, worker_process
) -> None:  # type: ignore[no-untyped-def]
    resp = api_client(services_app, auth=False).get("/api/v1/health")
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert all(c["ok"] for c in body["checks"].values())
    assert isinstance(body["queue"]["depth"], int)
    worker = next(w for w in body["workers"] if w["id"].endswith(f":{worker_process.pid}"))
    assert worker["alive"] and worker["threads"] == 2


def test_rabbitmq_queue_depth_counts_waiting_messages(services_env: dict[str, str]) -> None:
    queue = _unique("parseq-depth").replace("-", "_")
    app = create_app(Config.from_env(environ={**services_env, "PARSEQ_QUEUE_NAME": queue}))
    client = api_client(app, auth=False)
    try:
        assert client.get("/api/v1/health").json["queue"]["depth"] == 0  # not declared yet
        with app.app_context():
            parser = add_parser(_unique("echo"), "echo_env.py")
            created = [runs.create_run(parser).id for _ in range(3)]
        body = client.get("/api/v1/health").json
        assert body["checks"]["broker"]["ok"] is True
        assert body["queue"] == {"name": queue, "depth": 3}
    finally:
        with app.app_context():
            for run_id in created:
                runs.cancel_run(runs.get_run(run_id))
            db.engine.dispose()
        delete_rabbit_queues(queue)


def test_redis_queue_depth_counts_waiting_messages(services_env: dict[str, str]) -> None:
    queue = _unique("parseq-depth")
    env = {**services_env, "PARSEQ_BROKER_URL": REDIS_URL, "PARSEQ_QUEUE_NAME": queue}
    app = create_app(Config.from_env(environ=env))
    client = api_client(app, auth=False)
    try:
        with app.app_context():
            parser = add_parser(_unique("echo"), "echo_env.py")
            for _ in range(2):
                runs.cancel_run(runs.create_run(parser))
        body = client.get("/api/v1/health").json
        assert body["checks"]["broker"]["ok"] is True
        assert body["queue"]["depth"] == 2
    finally:
        app.extensions["parseq"].broker.flush_all()
        with app.app_context():
            db.engine.dispose()


@pytest.mark.parametrize(
    ("query", "index"),
    [("parser={name}", "ix_runs_parser_id_id"), ("status=error", "ix_runs_status_id")],
)
def test_run_list_queries_walk_the_indexes(services_app: Flask, query: str, index: str) -> None:
    """The filtered, cursor-paginated query PostgreSQL runs uses the composite index (seq
    scans are priced out, as they would be at 1,000,000 rows)."""
    client = api_client(services_app)
    with services_app.app_context():
        name = _unique("idx")
        add_parser(name, "echo_env.py")
        engine = db.engine
    seen: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if re.search(r"FROM runs\b", statement) and "ORDER BY runs.id DESC" in statement:
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        resp = client.get(f"/api/v1/runs?{query.format(name=name)}&cursor=1000000&limit=5")
        assert resp.status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert len(seen) == 1
    statement, parameters = seen[0]
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    assert f"Index Scan Backward using {index}" in plan, plan


def test_delete_on_postgresql_follows_the_rule_and_removes_s3_objects(
    services_app: Flask, worker_process
) -> None:  # type: ignore[no-untyped-def]
    client = api_client(services_app)
    with services_app.app_context():
        name = _unique("echo")
        add_parser(name, "echo_env.py")
    done = client.post(f"/api/v1/parsers/{name}/runs?wait=30", json={}).json
    assert done["status"] == "completed", done
    storage = services_app.extensions["parseq"].storage
    with services_app.app_context():
        keys = [f.storage_key for f in runs.get_run(done["id"]).files if f.size]
        assert keys and all(storage.exists(k) for k in keys)
        pending = runs.create_run(runs.get_parser(name), enqueue=False).id
    refused = client.delete(f"/api/v1/parsers/{name}")
    assert refused.status_code == 409 and refused.json["error"]["active_runs"] == [pending]
    resp = client.delete(f"/api/v1/parsers/{name}?cascade=true")
    assert resp.json == {"deleted": name, "runs_deleted": 2}
    assert not any(storage.exists(k) for k in keys)
    assert client.get(f"/api/v1/runs/{done['id']}").status_code == 404
