"""Heartbeats (``parseq.worker.watchdog``): one thread per process beats all the runs it
executes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.services import runs
from parseq.worker import watchdog
from tests.conftest import add_parser


def _running_runs(count: int) -> list[Run]:
    parser = add_parser("echo", "echo_env.py")
    started = [runs.create_run(parser, enqueue=False) for _ in range(count)]
    for run in started:
        run.status, run.started_at, run.heartbeat_at = RunStatus.RUNNING, utcnow(), utcnow()
    db.session.commit()
    return started


@pytest.fixture
def updates(sqlite_app: Flask) -> Iterator[list[str]]:
    """The UPDATE statements sent to the database meanwhile."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("UPDATE"):
            sent.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    yield sent
    sa.event.remove(db.engine, "before_cursor_execute", record)


def test_one_update_beats_every_run_with_nothing_else_to_write(
    sqlite_app: Flask, updates: list[str], tmp_path: Path
) -> None:
    quiet, keyed, reporting = _running_runs(3)
    progress = tmp_path / "progress.json"
    progress.write_text(json.dumps({"done": 3, "total": 10, "message": "token s3cret"}))
    dogs = [
        watchdog.Watchdog(sqlite_app, quiet.id, 1.0),
        watchdog.Watchdog(sqlite_app, keyed.id, 1.0, extra_values={"env_key": "abc"}),
        watchdog.Watchdog(sqlite_app, reporting.id, 1.0, progress, secrets=["s3cret"]),
    ]
    before = {run.id: run.heartbeat_at for run in (quiet, keyed, reporting)}
    updates.clear()
    watchdog.beat(dogs)
    assert len(updates) == 3  # the quiet run's, and one per run with something to write
    db.session.expire_all()
    for run in (quiet, keyed, reporting):
        assert run.heartbeat_at > before[run.id]
    assert keyed.env_key == "abc"
    assert (reporting.progress_done, reporting.progress_total) == (3, 10)
    assert "s3cret" not in reporting.progress_message

    updates.clear()
    watchdog.beat(dogs)  # the env key is written, the progress unchanged: nothing but beats
    assert len(updates) == 1
    assert not any(dog.cancel.is_set() for dog in dogs)


def test_a_run_ended_elsewhere_has_its_cancel_set_and_the_others_not(sqlite_app: Flask) -> None:
    cancelled, reaped, deleted, going_on = _running_runs(4)
    dogs = [
        watchdog.Watchdog(sqlite_app, run.id, 1.0) for run in (cancelled, reaped, deleted, going_on)
    ]
    runs.cancel_run(cancelled)
    reaped.status = RunStatus.ERROR
    db.session.delete(deleted)
    db.session.commit()
    watchdog.beat(dogs)
    assert [dog.cancel.is_set() for dog in dogs] == [True, True, True, False]


def _heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "heartbeats"]


def test_one_thread_beats_all_runs_and_ends_when_none_is_left(sqlite_app: Flask) -> None:
    first, second = _running_runs(2)
    already = set(_heartbeat_threads())
    dogs = [watchdog.Watchdog(sqlite_app, run.id, 0.05) for run in (first, second)]
    for dog in dogs:
        dog.start()
    beater = [t for t in _heartbeat_threads() if t not in already]
    assert len(beater) == 1
    since = utcnow()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        db.session.expire_all()
        if first.heartbeat_at > since and second.heartbeat_at > since:
            break
        time.sleep(0.02)
    assert first.heartbeat_at > since and second.heartbeat_at > since
    with watchdog.Watchdog(sqlite_app, first.id, 0.05):  # the heartbeat of an env build
        assert [t for t in _heartbeat_threads() if t not in already] == beater
    for dog in dogs:
        dog.stop()
    beater[0].join(timeout=10)
    assert not beater[0].is_alive()


def test_a_forked_child_does_not_count_on_its_parents_thread(sqlite_app: Flask) -> None:
    (run,) = _running_runs(1)
    with watchdog.Watchdog(sqlite_app, run.id, 30.0):
        assert watchdog._beaters
        pid = os.fork()
        if pid == 0:  # the child: a watchdog started here gets a thread of its own
            os._exit(0 if not watchdog._beaters else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
