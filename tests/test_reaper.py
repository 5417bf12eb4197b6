"""The reaper and redelivery: no run stays ``running`` after its worker died, and a duplicate
message never runs a run twice. Ends with kill -9 of a real ``parseq worker``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.queue.broker import send_run
from parseq.services import runs
from parseq.services.reaper import WORKER_LOST, reap_once
from parseq.web.app import create_app
from parseq.worker import execution
from tests.conftest import add_parser, delete_rabbit_queues, wait_for_run, wait_for_status
from tests.test_supervisor import _alive


def _running(run: Run, beat_age_s: float) -> Run:
    """Make ``run`` look claimed by a worker whose last heartbeat was ``beat_age_s`` ago."""
    then = utcnow() - timedelta(seconds=beat_age_s)
    run.status, run.started_at, run.heartbeat_at = RunStatus.RUNNING, then, then
    run.worker_id = "gone-host:4242"
    db.session.commit()
    return run


def test_reaper_marks_stale_runs_worker_lost_and_leaves_live_ones(sqlite_app: Flask) -> None:
    parser = add_parser("echo", "echo_env.py")
    stale = _running(runs.create_run(parser, enqueue=False), beat_age_s=120)
    live = _running(runs.create_run(parser, enqueue=False), beat_age_s=5)
    pending = runs.create_run(parser, enqueue=False)

    assert reap_once(sqlite_app) == 1
    db.session.expire_all()
    assert stale.status is RunStatus.ERROR
    assert stale.error.startswith(WORKER_LOST)
    assert "gone-host:4242" in stale.error
    assert stale.finished_at is not None
    assert live.status is RunStatus.RUNNING
    assert pending.status is RunStatus.PENDING
    assert reap_once(sqlite_app) == 0  # a second reaper finds nothing left to do


def test_reaper_requeues_a_lost_run_as_a_new_attempt_when_retries_are_allowed(
    sqlite_app: Flask,
) -> None:
    parser = add_parser("echo", "echo_env.py", max_retries=1)
    lost = _running(runs.create_run(parser, enqueue=False, args={"who": "again"}), 120)
    assert reap_once(sqlite_app) == 1
    assert reap_once(sqlite_app) == 0
    db.session.expire_all()
    retries = db.session.execute(db.select(Run).where(Run.retry_of_id == lost.id)).scalars()
    (retry,) = list(retries)
    assert (retry.status, retry.attempt, retry.args) == (RunStatus.PENDING, 2, {"who": "again"})
    assert retry.to_dict()["previous_error"].startswith(WORKER_LOST)
    # The retry message waits in the broker's delay queue for its backoff.
    broker = sqlite_app.extensions["parseq"].broker
    assert broker.queues[f"{sqlite_app.extensions['parseq'].config.queue_name}.DQ"].qsize() == 1


def test_redelivered_message_for_a_run_another_worker_executes_is_ignored(
    embedded_app: Flask,
) -> None:
    parser = add_parser("sleeper", "sleeper.py", timeout_s=2.0)
    run = runs.create_run(parser)
    assert wait_for_status(run.id, RunStatus.RUNNING).status is RunStatus.RUNNING
    started_at, worker_id = run.started_at, run.worker_id
    send_run(run.id)  # as RabbitMQ would redeliver
    assert execution.execute_run(run.id) is None  # and as a second worker would see it
    done = wait_for_run(run.id)
    assert done.status is RunStatus.TIMEOUT  # the first worker's outcome, recorded once
    assert (done.started_at, done.worker_id) == (started_at, worker_id)
    assert sorted(f.name for f in done.files) == ["output.txt", "run.log"]


def test_a_worker_whose_run_was_reaped_stops_it_and_keeps_the_verdict(
    embedded_app: Flask,
) -> None:
    parser = add_parser("sleeper", "sleeper.py", timeout_s=30.0)
    run = runs.create_run(parser)
    assert wait_for_status(run.id, RunStatus.RUNNING).status is RunStatus.RUNNING
    # As the reaper does when this worker stalled past the heartbeat timeout.
    db.session.execute(
        db.update(Run)
        .where(Run.id == run.id)
        .values(status=RunStatus.ERROR, error=f"{WORKER_LOST}: test", finished_at=utcnow())
    )
    db.session.commit()
    deadline = time.monotonic() + 10
    while not runs.get_run(run.id).files and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker stops the process within a heartbeat and stores files
        db.session.expire_all()
    done = runs.get_run(run.id)
    assert done.status is RunStatus.ERROR
    assert done.error == f"{WORKER_LOST}: test"
    assert done.file("run.log") is not None


# --- fault test: kill -9 of a real worker process --------------------------------------------


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parseq.cli", "worker", "--threads", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while log_path.read_bytes().count(b"Parseq worker on") < 1 + getattr(_start_worker, "n", 0):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    _start_worker.n = getattr(_start_worker, "n", 0) + 1  # type: ignore[attr-defined]
    return proc


@pytest.mark.services
def test_kill_9_of_the_worker_mid_run_is_reaped_and_a_fresh_worker_drains_the_queue(
    services_env: dict[str, str], services_app: Flask, tmp_path: Path
) -> None:
    queue = f"parseq_kill_{uuid.uuid4().hex[:8]}"  # not the session worker's queue
    env = {
        **services_env,
        "PARSEQ_QUEUE_NAME": queue,
        "PARSEQ_HEARTBEAT_INTERVAL_S": "0.3",
        "PARSEQ_HEARTBEAT_TIMEOUT_S": "2",
    }
    app = create_app(Config.from_env(environ=env))
    log_path = tmp_path / "workers.log"
    _start_worker.n = 0  # type: ignore[attr-defined]
    first = _start_worker(env, log_path)
    second: subprocess.Popen[bytes] | None = None
    try:
        with app.app_context():
            tag = uuid.uuid4().hex[:6]
            doomed = runs.create_run(add_parser(f"doomed-{tag}", "pid_sleeper.py", timeout_s=60))
            timing_out = add_parser(f"timing-out-{tag}", "sleeper.py", timeout_s=1)
            echo = add_parser(f"echo-{tag}", "echo_env.py")
            assert wait_for_status(doomed.id, RunStatus.RUNNING).status is RunStatus.RUNNING
            rest = [runs.create_run(echo).id for _ in range(3)] + [runs.create_run(timing_out).id]
            pid_file = app.extensions["parseq"].config.state_dir / str(doomed.parser_id) / "pid"
            deadline = time.monotonic() + 15
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # the parser is really executing

            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
            time.sleep(2.5)  # past the heartbeat timeout
            assert reap_once(app) == 1  # as the scheduler's reaper thread does
            lost = wait_for_run(doomed.id, timeout_s=1)
            assert lost.status is RunStatus.ERROR
            assert lost.error.startswith(WORKER_LOST)
            assert str(first.pid) in lost.error

            # RabbitMQ redelivers what the dead worker held (the doomed run's message among
            # them); claim() makes that safe, and the rest of the queue completes.
            second = _start_worker(env, log_path)
            finished = [wait_for_run(i, timeout_s=30) for i in rest]
            assert [r.status for r in finished[:3]] == [RunStatus.COMPLETED] * 3
            assert finished[3].status is RunStatus.TIMEOUT
            assert all(r.worker_id.endswith(f":{second.pid}") for r in finished)
            assert wait_for_run(doomed.id).error.startswith(WORKER_LOST)  # not run again
            # The parser process died with its worker (parent-death signal), not orphaned.
            assert not _alive(int(pid_file.read_text()))
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
        with app.app_context():
            db.engine.dispose()
        delete_rabbit_queues(queue)
