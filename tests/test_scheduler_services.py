"""The scheduler on real services: two scheduler processes on one PostgreSQL, a RabbitMQ outage."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import OverlapPolicy, Run, RunStatus, ScheduleType, db, utcnow
from parseq.scheduler.service import SchedulerService, fire
from parseq.web.app import create_app
from parseq.worker.actors import start_worker
from tests.conftest import TcpProxy, add_parser, delete_rabbit_queues, wait_for_run

pytestmark = pytest.mark.services

CREATED = re.compile(r"created run (\d+) of (\S+) due (\S+ \S+)")


def _runs_of(parser_id: int) -> list[Run]:
    db.session.expire_all()
    return list(
        db.session.execute(
            db.select(Run).where(Run.parser_id == parser_id).order_by(Run.scheduled_for)
        ).scalars()
    )


def _wait(predicate: Callable[[], object], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def start_scheduler(
    services_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[str], tuple[subprocess.Popen[bytes], Path]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(label: str) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = tmp_path / f"scheduler-{label}.log"
        env = {**services_env, "PARSEQ_SCHEDULER_SYNC_INTERVAL_S": "0.3"}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "parseq.cli", "scheduler"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        _wait(lambda: b"Parseq scheduler on" in log_path.read_bytes() or proc.poll() is not None)
        assert proc.poll() is None, log_path.read_text()
        return proc, log_path

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)


def _created(log_path: Path, name: str) -> dict[int, str]:
    return {int(m[1]): m[3] for m in CREATED.finditer(log_path.read_text()) if m[2] == name}


def test_two_scheduler_processes_make_one_run_per_occurrence(
    services_app: Flask, start_scheduler
) -> None:  # type: ignore[no-untyped-def]
    name = f"every-second-{uuid.uuid4().hex[:6]}"
    with services_app.app_context():
        parser = add_parser(
            name,
            "echo_env.py",
            schedule_type=ScheduleType.INTERVAL,
            interval_s=1,
            overlap=OverlapPolicy.ALLOW,
        )
        first, first_log = start_scheduler("a")
        _wait(lambda: b"scheduler is active" in first_log.read_bytes())
        second, second_log = start_scheduler("b")
        _wait(lambda: len(_runs_of(parser.id)) >= 3)
        assert b"scheduler is active" not in second_log.read_bytes()  # standby

        os.kill(first.pid, signal.SIGKILL)  # the active one dies: the standby takes over
        first.wait(timeout=10)
        killed_with = len(_runs_of(parser.id))
        _wait(lambda: len(_runs_of(parser.id)) >= killed_with + 3)
        second.terminate()
        second.wait(timeout=15)

        found = _runs_of(parser.id)
        dues = [r.scheduled_for for r in found]
        assert len(set(dues)) == len(dues)
        for due in dues:  # on the 1 s grid counted from the parser's creation
            assert (due - parser.created_at).total_seconds() % 1 == pytest.approx(0)
    by_first, by_second = _created(first_log, name), _created(second_log, name)
    assert by_first and by_second
    assert set(by_first) | set(by_second) == {r.id for r in found}
    assert not set(by_first) & set(by_second)
    # A clean hand-over: the standby created nothing the active one was responsible for.
    assert max(by_first.values()) < min(by_second.values())


def test_the_unique_occurrence_key_holds_across_database_sessions(
    services_app: Flask, services_env: dict[str, str]
) -> None:
    other = create_app(Config.from_env(environ=services_env))
    due = datetime(2026, 1, 1, tzinfo=utcnow().tzinfo)
    with services_app.app_context():
        parser = add_parser(f"dup-{uuid.uuid4().hex[:6]}", "echo_env.py", schedule_type="date")
        parser_id = parser.id
        parser.run_at = due
        db.session.commit()
        assert fire(parser_id, due, grace_s=1e9) is not None
    with other.app_context():
        assert fire(parser_id, due, grace_s=1e9) is None
        db.engine.dispose()
    with services_app.app_context():
        assert len(_runs_of(parser_id)) == 1


def test_broker_outage_delays_a_due_run_and_it_runs_once(
    services_app: Flask,
    services_env: dict[str, str],
    tcp_proxy: Callable[[int], TcpProxy],
) -> None:
    proxy = tcp_proxy(5672)
    queue = f"parseq_outage_{uuid.uuid4().hex[:8]}"
    env = {**services_env, "PARSEQ_QUEUE_NAME": queue}
    # The scheduler reaches RabbitMQ through the proxy; the worker directly.
    sched_app = create_app(
        Config.from_env(
            environ=env,
            broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F",
            scheduler_sync_interval_s=0.2,
            sweep_interval_s=0.3,
            sweep_pending_after_s=0.5,
        )
    )
    worker_app = create_app(Config.from_env(environ=env))
    worker = start_worker(worker_app, threads=1)
    service = SchedulerService(sched_app)
    try:
        proxy.close()
        with sched_app.app_context():
            when = utcnow() + timedelta(seconds=1)
            parser = add_parser(
                f"outage-{uuid.uuid4().hex[:6]}", "echo_env.py", schedule_type="date", run_at=when
            )
            service.start()
            _wait(lambda: _runs_of(parser.id))
            time.sleep(1.5)  # a few sweeps while the broker is unreachable
            [run] = _runs_of(parser.id)
            assert (run.status, run.enqueued_at) == (RunStatus.PENDING, None)

            proxy.open()
            run = wait_for_run(run.id, timeout_s=30)
            assert run.status is RunStatus.COMPLETED, run.error
            # A run is sent, then marked enqueued: a fast worker can finish it in between.
            _wait(lambda: _runs_of(parser.id)[0].enqueued_at is not None)
            [run] = _runs_of(parser.id)
            assert run.started_at >= run.enqueued_at - timedelta(seconds=1)
            assert len(_runs_of(parser.id)) == 1
    finally:
        service.stop()
        worker.stop()
        sched_app.extensions["parseq"].broker.close()
        worker_app.extensions["parseq"].broker.close()
        delete_rabbit_queues(queue)
        for app in (sched_app, worker_app):
            with app.app_context():
                db.engine.dispose()
