"""REST API on the embedded default: runs through the in-memory broker and worker threads."""

from __future__ import annotations

import json
import time

import pytest
from flask import Flask

from parseq.db.models import Run, RunStatus, db
from parseq.services import runs
from parseq.worker import execution
from tests.conftest import add_parser, api_client, wait_for_run, wait_for_status


@pytest.fixture
def client(embedded_app: Flask):  # type: ignore[no-untyped-def]
    add_parser("echo", "echo_env.py", secrets={"API_TOKEN": "tok-123"}, default_args={"who": "x"})
    add_parser("fail", "fail.py")
    return api_client(embedded_app)


def _run(client, name: str = "echo", **body):  # type: ignore[no-untyped-def]
    resp = client.post(f"/api/v1/parsers/{name}/runs", json=body)
    assert resp.status_code == 202, resp.json
    return wait_for_run(resp.json["id"])


def test_post_run_returns_202_with_location(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/api/v1/parsers/echo/runs", json={"args": {"who": "bob"}})
    assert resp.status_code == 202
    assert resp.headers["Location"] == f"/api/v1/runs/{resp.json['id']}"
    assert resp.json["status"] == "pending"
    assert resp.json["trigger"] == "api"
    assert resp.json["args"] == {"who": "bob"}


def test_completed_run_serves_its_files(client) -> None:  # type: ignore[no-untyped-def]
    run = _run(client, args={"who": "alice"})
    assert run.status is RunStatus.COMPLETED, run.error
    body = client.get(f"/api/v1/runs/{run.id}").json
    assert body["status"] == "completed"
    assert body["exit_code"] == 0
    assert body["started_at"] and body["finished_at"]
    names = [f["name"] for f in client.get(f"/api/v1/runs/{run.id}/files").json["files"]]
    assert names == ["data/items.csv", "output.txt", "report.json", "run.log"]

    out = client.get(f"/api/v1/runs/{run.id}/files/output.txt")
    assert out.status_code == 200
    assert out.data == b"hello alice\n"
    assert out.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert out.headers["Content-Disposition"].startswith('attachment; filename="output.txt"')

    csv = client.get(f"/api/v1/runs/{run.id}/files/data/items.csv")
    assert csv.data == b"id,name\n1,alpha\n"
    assert csv.headers["Content-Type"].startswith("text/csv")
    log = client.get(f"/api/v1/runs/{run.id}/files/run.log").data.decode()
    assert "stdout line" in log and "stderr line" in log

    report = json.loads(client.get(f"/api/v1/runs/{run.id}/files/report.json").data)
    assert report["secret"] == "tok-123"
    assert report["argv"] == ["--who", "alice"]


def test_default_args_are_overlaid_by_run_args(client) -> None:  # type: ignore[no-untyped-def]
    run = _run(client)
    assert run.args == {"who": "x"}
    assert client.get(f"/api/v1/runs/{run.id}/files/output.txt").data == b"hello x\n"


def test_failing_script_is_error_with_stderr_tail(client) -> None:  # type: ignore[no-untyped-def]
    run = _run(client, "fail")
    body = client.get(f"/api/v1/runs/{run.id}").json
    assert body["status"] == "error"
    assert body["exit_code"] == 3
    assert body["error"].endswith("ValueError: the site changed its layout")
    assert "partial work done" not in body["error"]  # stdout is in the log, not the error


def test_missing_script_is_error_with_a_clear_message(client) -> None:  # type: ignore[no-untyped-def]
    add_parser("ghost", "ghost.py")
    run = _run(client, "ghost")
    assert run.status is RunStatus.ERROR
    assert run.error == "script parsers/ghost.py does not exist"


def test_parsers_are_listed_without_secret_values(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/v1/parsers").json
    assert [p["name"] for p in body["parsers"]] == ["echo", "fail"]
    assert body["parsers"][0]["secrets"] == ["API_TOKEN"]
    assert "tok-123" not in json.dumps(body)
    assert client.get("/api/v1/parsers/echo").json["path"] == "echo_env.py"


def test_runs_are_filtered_and_paginated(client) -> None:  # type: ignore[no-untyped-def]
    ok = [_run(client).id for _ in range(3)]
    bad = _run(client, "fail").id
    page1 = client.get("/api/v1/runs?limit=2").json
    assert [r["id"] for r in page1["runs"]] == [bad, ok[2]]
    page2 = client.get(f"/api/v1/runs?limit=2&cursor={page1['next_cursor']}").json
    assert [r["id"] for r in page2["runs"]] == [ok[1], ok[0]]
    assert page2["next_cursor"] is None
    assert [r["id"] for r in client.get("/api/v1/runs?status=error").json["runs"]] == [bad]
    assert [r["id"] for r in client.get("/api/v1/runs?parser=fail").json["runs"]] == [bad]


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status"),
    [
        ("get", "/api/v1/parsers/nope", {}, 404),
        ("post", "/api/v1/parsers/nope/runs", {"json": {}}, 404),
        ("get", "/api/v1/runs/999999", {}, 404),
        ("get", "/api/v1/runs/999999/files", {}, 404),
        ("get", "/api/v1/runs?parser=nope", {}, 404),
        ("get", "/api/v1/nothing-here", {}, 404),
        (
            "post",
            "/api/v1/parsers/echo/runs",
            {"data": "{not json", "content_type": "application/json"},
            400,
        ),
        ("post", "/api/v1/parsers/echo/runs", {"json": [1, 2]}, 400),
        ("post", "/api/v1/parsers/echo/runs", {"json": {"args": [1]}}, 400),
        ("post", "/api/v1/parsers/echo/runs", {"json": {"args": "x"}}, 400),
        ("post", "/api/v1/parsers/echo/runs", {"json": {"args": {"bad name": 1}}}, 422),
        ("post", "/api/v1/parsers/echo/runs", {"json": {"argz": {}}}, 400),
        ("get", "/api/v1/runs?status=weird", {}, 400),
        ("get", "/api/v1/runs?limit=abc", {}, 400),
        ("get", "/api/v1/runs?limit=0", {}, 400),
        ("delete", "/api/v1/parsers", {}, 405),
    ],
)
def test_bad_requests_get_json_errors(client, method, url, kwargs, status) -> None:  # type: ignore[no-untyped-def]
    resp = getattr(client, method)(url, **kwargs)
    assert resp.status_code == status
    assert resp.is_json
    assert set(resp.json["error"]) >= {"code", "message"}
    assert resp.json["error"]["message"]


@pytest.mark.parametrize(
    "name",
    [
        "../../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/secret_key",
        "/etc/passwd",
        "data/../output.txt",
        "missing.txt",
        "..",
    ],
)
def test_file_path_tricks_are_404(client, name: str) -> None:  # type: ignore[no-untyped-def]
    run = _run(client)
    resp = client.get(f"/api/v1/runs/{run.id}/files/{name}")
    assert resp.status_code == 404
    assert resp.is_json
    assert b"root:" not in resp.data


def test_health_reports_database_and_storage(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/v1/health").json
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]


def test_cancel_running_run_kills_its_group(client, embedded_app: Flask) -> None:  # type: ignore[no-untyped-def]
    from tests.test_supervisor import _alive

    sleeper = add_parser("sleeper", "sleeper.py")
    run_id = client.post("/api/v1/parsers/sleeper/runs").json["id"]
    running = wait_for_status(run_id, RunStatus.RUNNING)
    assert running.status is RunStatus.RUNNING
    config = embedded_app.extensions["parseq"].config
    state = config.state_dir / str(sleeper.id) / "child.pid"
    deadline = time.monotonic() + 10
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    first_beat = running.heartbeat_at
    time.sleep(1.5)
    db.session.expire_all()
    beaten = db.session.get(Run, run_id)
    assert beaten.heartbeat_at > first_beat  # the watchdog beats
    assert beaten.env_key  # and its first beat records the env the run uses

    asked = time.monotonic()
    resp = client.post(f"/api/v1/runs/{run_id}/cancel")
    assert resp.status_code == 200
    assert resp.json["status"] == "cancelled"
    run = wait_for_run(run_id)
    db.session.expire_all()
    run = db.session.get(Run, run_id)
    while run.finished_at is None and time.monotonic() - asked < 10:
        time.sleep(0.05)
        db.session.expire_all()
        run = db.session.get(Run, run_id)
    assert run.status is RunStatus.CANCELLED
    assert run.finished_at is not None
    assert time.monotonic() - asked < 5
    child = int(state.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert client.post(f"/api/v1/runs/{run_id}/cancel").status_code == 409


def test_cancelled_pending_run_never_starts(client) -> None:  # type: ignore[no-untyped-def]
    parser = runs.get_parser("echo")
    run = runs.create_run(parser, enqueue=False)
    resp = client.post(f"/api/v1/runs/{run.id}/cancel")
    assert resp.json["status"] == "cancelled"
    assert resp.json["error"] == "cancelled before it started"
    assert execution.execute_run(run.id) is None
    db.session.expire_all()
    assert db.session.get(Run, run.id).started_at is None


def test_cancel_unknown_or_finished_run(client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/api/v1/runs/424242/cancel").status_code == 404
    run = _run(client)
    resp = client.post(f"/api/v1/runs/{run.id}/cancel")
    assert resp.status_code == 409
    assert resp.json["error"]["code"] == "conflict"


# --- synchronous runs, filters ---------------------------------------------------------------


def test_wait_returns_the_finished_run_with_its_files(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/api/v1/parsers/echo/runs?wait=20", json={"args": {"who": "sync"}})
    assert resp.status_code == 200, resp.json
    assert resp.json["status"] == "completed"
    assert resp.headers["Location"] == f"/api/v1/runs/{resp.json['id']}"
    out = next(f for f in resp.json["files"] if f["name"] == "output.txt")
    assert out["url"] == f"/api/v1/runs/{resp.json['id']}/files/output.txt"
    assert client.get(out["url"]).data == b"hello sync\n"


def test_wait_that_runs_out_answers_202_with_the_unfinished_run(client) -> None:  # type: ignore[no-untyped-def]
    add_parser("sleeper", "sleeper.py")
    started = time.monotonic()
    resp = client.post("/api/v1/parsers/sleeper/runs?wait=0.5")
    assert resp.status_code == 202
    assert resp.json["status"] in ("pending", "running")
    assert time.monotonic() - started >= 0.5
    client.post(f"/api/v1/runs/{resp.json['id']}/cancel")
    wait_for_run(resp.json["id"])


@pytest.mark.parametrize("wait", ["abc", "-1", "61", "nan", "inf"])
def test_wait_beyond_the_maximum_is_400(client, wait: str) -> None:  # type: ignore[no-untyped-def]
    resp = client.post(f"/api/v1/parsers/echo/runs?wait={wait}")
    assert resp.status_code == 400
    assert "wait" in resp.json["error"]["message"]
    assert db.session.execute(db.select(Run)).first() is None  # nothing was started


def test_runs_filter_by_trigger_and_time(client) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from parseq.db.models import utcnow

    api_run = _run(client)
    manual = execution.run_now(runs.get_parser("echo"))
    assert [r["id"] for r in client.get("/api/v1/runs?trigger=api").json["runs"]] == [api_run.id]
    assert [r["id"] for r in client.get("/api/v1/runs?trigger=manual").json["runs"]] == [manual.id]
    middle = manual.queued_at.isoformat()
    since = client.get("/api/v1/runs", query_string={"since": middle}).json["runs"]
    until = client.get("/api/v1/runs", query_string={"until": middle}).json["runs"]
    assert [r["id"] for r in since] == [manual.id]
    assert [r["id"] for r in until] == [api_run.id]
    future = (utcnow() + timedelta(days=1)).isoformat()
    assert client.get("/api/v1/runs", query_string={"since": future}).json["runs"] == []
    naive = client.get("/api/v1/runs?until=2999-01-01T00:00:00").json["runs"]
    assert len(naive) == 2
    for bad in ("trigger=cron", "since=yesterday", "until=2024-13-01"):
        assert client.get(f"/api/v1/runs?{bad}").status_code == 400


def test_run_shows_its_progress(client) -> None:  # type: ignore[no-untyped-def]
    run = _run(client)
    body = client.get(f"/api/v1/runs/{run.id}").json
    assert body["progress"] == {"done": None, "total": None, "message": None}
    assert body["url"] == f"/api/v1/runs/{run.id}"


# --- auth on every endpoint ------------------------------------------------------------------


def test_every_endpoint_but_health_and_docs_needs_a_token(embedded_app: Flask) -> None:
    from tests.test_openapi import api_routes

    anonymous = api_client(embedded_app, auth=False)
    checked = 0
    for path, method in api_routes(embedded_app):
        url = (
            path.replace("{name}", "echo").replace("{run_id}", "1").replace("{file}", "output.txt")
        )
        resp = anonymous.open(url, method=method.upper())
        if path in ("/api/v1/health", "/api/v1/openapi.json", "/api/v1/docs"):
            assert resp.status_code == 200, path
        else:
            assert resp.status_code == 401, (method, path)
            assert resp.json["error"]["code"] == "unauthorized"
            checked += 1
    assert checked >= 15
