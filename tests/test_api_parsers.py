"""Parsers over the REST API: create, read, partial update, delete, enable/disable."""

from __future__ import annotations

import time

import pytest
from flask import Flask

from parseq.db.models import Parser, Run, RunStatus, db
from parseq.services import runs
from parseq.worker import execution
from tests.conftest import add_parser, api_client, wait_for_status
from tests.test_supervisor import _alive


@pytest.fixture
def client(sqlite_app: Flask):  # type: ignore[no-untyped-def]
    return api_client(sqlite_app)


def _parser(name: str) -> Parser:
    db.session.expire_all()
    return db.session.execute(db.select(Parser).filter_by(name=name)).scalar_one()


def test_create_returns_201_and_never_shows_secret_values(client) -> None:  # type: ignore[no-untyped-def]
    body = {
        "name": "echo",
        "path": "echo_env.py",
        "description": "says hello",
        "default_args": {"who": "x"},
        "secrets": {"API_TOKEN": "tok-123"},
        "timeout_s": 30,
        "max_retries": 2,
    }
    resp = client.post("/api/v1/parsers", json=body)
    assert resp.status_code == 201, resp.json
    assert resp.headers["Location"] == "/api/v1/parsers/echo"
    assert resp.json["secrets"] == ["API_TOKEN"]
    assert resp.json["timeout_s"] == 30.0 and resp.json["max_retries"] == 2
    assert resp.json["last_run"] is None
    assert "tok-123" not in resp.get_data(as_text=True)
    assert _parser("echo").secrets == {"API_TOKEN": "tok-123"}
    got = client.get("/api/v1/parsers/echo")
    assert got.status_code == 200 and "tok-123" not in got.get_data(as_text=True)
    assert [p["name"] for p in client.get("/api/v1/parsers").json["parsers"]] == ["echo"]


def test_get_shows_the_last_run(client) -> None:  # type: ignore[no-untyped-def]
    parser = add_parser("echo", "echo_env.py")
    execution.run_now(parser, {"who": "a"})
    second = execution.run_now(parser, {"who": "b"})
    last = client.get("/api/v1/parsers/echo").json["last_run"]
    assert last["id"] == second.id and last["status"] == "completed"
    assert last["url"] == f"/api/v1/runs/{second.id}"
    assert {"name": "output.txt", "url": f"/api/v1/runs/{second.id}/files/output.txt"}.items() <= {
        **next(f for f in last["files"] if f["name"] == "output.txt")
    }.items()


def test_update_is_partial_and_merges_secrets(client) -> None:  # type: ignore[no-untyped-def]
    add_parser("echo", "echo_env.py", secrets={"A": "1", "B": "2"}, description="old")
    resp = client.patch(
        "/api/v1/parsers/echo", json={"description": "new", "secrets": {"B": None, "C": "3"}}
    )
    assert resp.status_code == 200, resp.json
    assert resp.json["description"] == "new"
    assert resp.json["path"] == "echo_env.py"
    assert resp.json["secrets"] == ["A", "C"]
    assert _parser("echo").secrets == {"A": "1", "C": "3"}

    renamed = client.patch("/api/v1/parsers/echo", json={"name": "echo2"})
    assert renamed.status_code == 200 and renamed.json["name"] == "echo2"
    assert client.get("/api/v1/parsers/echo").status_code == 404
    add_parser("taken", "fail.py")
    clash = client.patch("/api/v1/parsers/echo2", json={"name": "taken"})
    assert clash.status_code == 409
    assert clash.json["error"]["field"] == "name"


def test_enable_and_disable(client) -> None:  # type: ignore[no-untyped-def]
    add_parser("echo", "echo_env.py")
    assert client.post("/api/v1/parsers/echo/disable").json["enabled"] is False
    assert _parser("echo").enabled is False
    assert client.post("/api/v1/parsers/echo/enable").json["enabled"] is True
    assert client.post("/api/v1/parsers/nope/enable").status_code == 404


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"name", "path"}),
        ({"name": "Bad Name", "path": "echo_env.py"}, {"name"}),
        ({"name": "a", "path": "../../etc/passwd.py"}, {"path"}),
        ({"name": "a", "path": "/abs.py"}, {"path"}),
        ({"name": "a", "path": "x.txt"}, {"path"}),
        ({"name": "a", "path": "echo_env.py", "kind": "notebook"}, {"path"}),
        ({"name": "a", "path": "echo_env.py", "kind": "shell"}, {"kind"}),
        ({"name": "a", "path": "echo_env.py", "timeout_s": -1}, {"timeout_s"}),
        ({"name": "a", "path": "echo_env.py", "timeout_s": "10"}, {"timeout_s"}),
        ({"name": "a", "path": "echo_env.py", "max_retries": True}, {"max_retries"}),
        ({"name": "a", "path": "echo_env.py", "enabled": "yes"}, {"enabled"}),
        ({"name": "a", "path": "echo_env.py", "default_args": [1]}, {"default_args"}),
        ({"name": "a", "path": "echo_env.py", "default_args": {"bad name": 1}}, {"default_args"}),
        ({"name": "a", "path": "echo_env.py", "secrets": {"PATH": "x"}}, {"secrets"}),
        ({"name": "a", "path": "echo_env.py", "secrets": {"1X": "x"}}, {"secrets"}),
        ({"name": "a", "path": "echo_env.py", "secrets": {"X": 5}}, {"secrets"}),
        ({"name": 5, "path": 7, "description": 1}, {"name", "path", "description"}),
    ],
)
def test_invalid_fields_are_422_with_field_messages(client, body, fields) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/api/v1/parsers", json=body)
    assert resp.status_code == 422, resp.json
    error = resp.json["error"]
    assert error["code"] == "validation_error"
    assert set(error["fields"]) == fields
    assert all(error["fields"].values())
    assert db.session.execute(db.select(Parser)).first() is None


@pytest.mark.parametrize("path", ["~/x.py", "..\\x.py", "nope.py", "sub/nope.py"])
def test_a_script_that_does_not_exist_is_refused_at_save(client, path: str) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/api/v1/parsers", json={"name": "a", "path": path})
    assert resp.status_code == 422, resp.json
    assert resp.json["error"]["fields"]["path"].endswith("does not exist")
    add_parser("echo", "echo_env.py")
    resp = client.patch("/api/v1/parsers/echo", json={"path": path})
    assert resp.status_code == 422 and "does not exist" in resp.json["error"]["fields"]["path"]
    assert _parser("echo").path == "echo_env.py"
    assert [p.name for p in db.session.execute(db.select(Parser)).scalars()] == ["echo"]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"name": "a", "path": "echo_env.py", "cron": "* * * * *"}}, 400),
        ({"json": [1]}, 400),
        ({"data": "{nope", "content_type": "application/json"}, 400),
    ],
)
def test_malformed_bodies_are_400(client, kwargs, status) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/api/v1/parsers", **kwargs)
    assert resp.status_code == status
    assert resp.json["error"]["message"]


def test_create_conflicts_with_an_existing_name(client) -> None:  # type: ignore[no-untyped-def]
    add_parser("echo", "echo_env.py")
    resp = client.post("/api/v1/parsers", json={"name": "echo", "path": "fail.py"})
    assert resp.status_code == 409


def test_update_validates_path_against_a_new_kind(client) -> None:  # type: ignore[no-untyped-def]
    add_parser("echo", "echo_env.py")
    resp = client.patch("/api/v1/parsers/echo", json={"kind": "notebook"})
    assert resp.status_code == 422
    assert set(resp.json["error"]["fields"]) == {"path"}
    assert client.patch("/api/v1/parsers/nope", json={}).status_code == 404
    assert client.patch("/api/v1/parsers/echo", json={"bogus": 1}).status_code == 400


def test_delete_is_refused_while_runs_are_active_unless_cascade(client, sqlite_app: Flask) -> None:  # type: ignore[no-untyped-def]
    parser = add_parser("echo", "echo_env.py")
    done = execution.run_now(parser)
    pending = runs.create_run(parser, enqueue=False)
    storage = sqlite_app.extensions["parseq"].storage
    keys = [f.storage_key for f in done.files]
    done_id, pending_id = done.id, pending.id
    assert all(storage.exists(k) for k in keys)

    refused = client.delete("/api/v1/parsers/echo")
    assert refused.status_code == 409
    assert refused.json["error"]["active_runs"] == [pending_id]
    assert client.delete("/api/v1/parsers/echo?cascade=maybe").status_code == 400

    resp = client.delete("/api/v1/parsers/echo?cascade=true")
    assert resp.status_code == 200
    assert resp.json == {"deleted": "echo", "runs_deleted": 2}
    assert client.get("/api/v1/parsers/echo").status_code == 404
    assert client.get(f"/api/v1/runs/{done_id}").status_code == 404
    db.session.expire_all()
    assert db.session.execute(db.select(Run)).first() is None
    assert not any(storage.exists(k) for k in keys)
    assert client.delete("/api/v1/parsers/echo").status_code == 404


def test_delete_without_active_runs_needs_no_flag(client) -> None:  # type: ignore[no-untyped-def]
    parser = add_parser("echo", "echo_env.py")
    execution.run_now(parser)
    assert client.delete("/api/v1/parsers/echo").status_code == 200


def test_cascade_delete_stops_a_running_run(embedded_app: Flask) -> None:
    client = api_client(embedded_app)
    sleeper = add_parser("sleeper", "sleeper.py")
    run_id = client.post("/api/v1/parsers/sleeper/runs").json["id"]
    assert wait_for_status(run_id, RunStatus.RUNNING).status is RunStatus.RUNNING
    config = embedded_app.extensions["parseq"].config
    state = config.state_dir / str(sleeper.id) / "child.pid"
    deadline = time.monotonic() + 10
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(state.read_text())
    assert client.delete("/api/v1/parsers/sleeper").status_code == 409
    assert client.delete("/api/v1/parsers/sleeper?cascade=1").status_code == 200
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
    # The worker stores the killed run's log after the delete: it must not stay an orphan.
    workdir = config.runs_dir / str(run_id)
    while workdir.exists() and time.monotonic() < deadline + 10:
        time.sleep(0.1)
    assert not workdir.exists()
    stored = embedded_app.extensions["parseq"].storage.root / "runs" / str(run_id)
    assert not [p for p in stored.rglob("*") if p.is_file()]


def test_schedule_is_set_shown_and_cleared(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.post(
        "/api/v1/parsers",
        json={
            "name": "echo",
            "path": "echo_env.py",
            "schedule": {"type": "cron", "cron": "*/15 * * * *", "timezone": "Europe/Moscow"},
        },
    )
    assert resp.status_code == 201, resp.json
    assert resp.json["schedule"]["cron"] == "*/15 * * * *"
    assert resp.json["schedule"]["timezone"] == "Europe/Moscow"
    assert len(resp.json["next_fire_times"]) == 5
    assert resp.json["next_run_at"] == resp.json["next_fire_times"][0]

    interval = client.patch("/api/v1/parsers/echo", json={"schedule": {"interval_s": "1h30m"}})
    assert interval.json["schedule"]["type"] == "interval"
    assert interval.json["schedule"]["interval_s"] == 5400
    assert _parser("echo").cron is None

    cleared = client.patch("/api/v1/parsers/echo", json={"schedule": None})
    assert cleared.json["schedule"] is None and cleared.json["next_fire_times"] == []


@pytest.mark.parametrize(
    "schedule",
    [
        "* * * * *",
        {"type": "cron", "cron": "not a cron"},
        {"type": "cron"},
        {"type": "weekly"},
        {"cron": 5},
        {"interval_s": 0},
        {"interval_s": 10**12},
        {"interval_s": True},
        {"type": "date", "run_at": "2001-01-01T00:00:00Z"},
        {"type": "cron", "cron": "* * * * *", "timezone": "Mars/Olympus"},
        {"type": "interval", "interval_s": 60, "start_at": "2030-01-02", "end_at": "2030-01-01"},
        {"every": "day"},
    ],
)
def test_bad_schedules_are_422_on_the_schedule_field(client, schedule) -> None:  # type: ignore[no-untyped-def]
    add_parser("echo", "echo_env.py")
    resp = client.patch("/api/v1/parsers/echo", json={"schedule": schedule})
    assert resp.status_code == 422, resp.json
    assert set(resp.json["error"]["fields"]) == {"schedule"}
    assert _parser("echo").schedule_type is None


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_timeouts_are_refused(client, raw: str) -> None:  # type: ignore[no-untyped-def]
    add_parser("echo", "echo_env.py")
    resp = client.patch(
        "/api/v1/parsers/echo",
        data=f'{{"timeout_s": {raw}}}',
        content_type="application/json",
    )
    assert resp.status_code == 422
    assert set(resp.json["error"]["fields"]) == {"timeout_s"}


@pytest.mark.parametrize(
    ("requirements", "says"),
    [
        ("six>=>1", "is not a valid requirement"),
        ("-e git+https://example.invalid/x.git", "-e"),
    ],
)
def test_bad_requirements_are_422_on_save(client, requirements: str, says: str) -> None:  # type: ignore[no-untyped-def]
    body = {"name": "req", "path": "echo_env.py", "requirements": requirements}
    resp = client.post("/api/v1/parsers", json=body)
    assert resp.status_code == 422, resp.json
    assert set(resp.json["error"]["fields"]) == {"requirements"}
    assert says in resp.json["error"]["fields"]["requirements"]
    body["requirements"] = "six==1.16.0"
    assert client.post("/api/v1/parsers", json=body).status_code == 201


def test_invalid_notebooks_are_422_on_save(client, sqlite_app: Flask) -> None:  # type: ignore[no-untyped-def]
    root = sqlite_app.extensions["parseq"].config.notebooks_dir
    root.mkdir(parents=True, exist_ok=True)
    (root / "broken.ipynb").write_text('{"cells": [}')
    body = {"name": "nb", "kind": "notebook", "path": "broken.ipynb"}
    resp = client.post("/api/v1/parsers", json=body)
    assert resp.status_code == 422
    assert "is not valid JSON" in resp.json["error"]["fields"]["path"]
    body["path"] = "missing.ipynb"
    resp = client.post("/api/v1/parsers", json=body)
    assert resp.status_code == 422
    assert "does not exist" in resp.json["error"]["fields"]["path"]
