"""Fault tests: database, broker and storage outages with real processes and real services.

The shared PostgreSQL and RabbitMQ daemons are never stopped: each test reaches them through a
:class:`~tests.conftest.TcpProxy` whose outage drops every connection and refuses new ones, as
a restart does. S3 is a moto server of the test's own, stopped and started on its port.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.queue.broker import send_run
from parseq.scheduler.sweeper import sweep_pending
from parseq.services import runs
from parseq.web.app import create_app, init_db
from tests.conftest import (
    RABBIT_URL,
    S3_KEYS,
    TcpProxy,
    add_parser,
    api_client,
    delete_rabbit_queues,
    free_port,
    start_worker_process,
    stop_process,
    wait_for_run,
)

pytestmark = pytest.mark.services


def _env(services_env: dict[str, str], tmp_path: Path, **changes: str) -> dict[str, str]:
    """The session's service settings with a queue, var dir and local storage of this test's."""
    env = {
        **services_env,
        "PARSEQ_QUEUE_NAME": f"parseq_outage_{uuid.uuid4().hex[:10]}",
        "PARSEQ_VAR_DIR": str(tmp_path / "var"),
        "PARSEQ_STORAGE_URL": (tmp_path / "storage").as_uri(),
        "PARSEQ_HEARTBEAT_INTERVAL_S": "0.5",
        "PARSEQ_LOG_LEVEL": "INFO",
    }
    env.update(changes)
    return env


#: The service setting that names each port a test may put a proxy in front of.
PROXIED_URLS = {5432: "PARSEQ_DATABASE_URL", 5672: "PARSEQ_BROKER_URL"}


@dataclass
class Stack:
    """One test's Parseq: its settings, its app (tables created), the proxy in front of a
    service if any, and the processes it started (stopped after the test)."""

    env: dict[str, str]
    app: Flask
    logs: Path
    proxy: TcpProxy | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(
        self, log_name: str = "worker.log", threads: int = 2
    ) -> subprocess.Popen[bytes]:
        """A real ``parseq worker`` with this stack's settings, once it consumes."""
        self.processes.append(start_worker_process(self.env, self.logs / log_name, threads))
        return self.processes[-1]

    def start_scheduler(self, log_name: str = "scheduler.log") -> subprocess.Popen[bytes]:
        """A real ``parseq scheduler`` with this stack's settings."""
        with (self.logs / log_name).open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "parseq.cli", "scheduler"],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        self.processes.append(proc)
        return proc


@pytest.fixture
def outage_stack(
    services_env: dict[str, str], tmp_path: Path, tcp_proxy: Callable[[int], TcpProxy]
) -> Iterator[Callable[..., Stack]]:
    """Make this test's :class:`Stack`: ``outage_stack(proxied=5432, PARSEQ_X="1")`` reaches
    the service on that port (PostgreSQL or RabbitMQ) through a :class:`TcpProxy`. After the
    test: its processes stopped, its connections closed, its queues deleted (then the proxy)."""
    made: list[Stack] = []

    def make(proxied: int | None = None, **changes: str) -> Stack:
        proxy = None
        if proxied is not None:
            proxy = tcp_proxy(proxied)
            name = PROXIED_URLS[proxied]
            changes[name] = services_env[name].replace(f":{proxied}/", f":{proxy.port}/")
        env = _env(services_env, tmp_path, **changes)
        app = create_app(Config.from_env(environ=env))
        init_db(app)
        made.append(Stack(env, app, tmp_path, proxy))
        return made[-1]

    yield make
    for stack in made:
        for proc in stack.processes:
            stop_process(proc)
        with stack.app.app_context():
            db.engine.dispose()
        delete_rabbit_queues(stack.env["PARSEQ_QUEUE_NAME"])


def _wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


def _lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def _count(app: Flask, status: RunStatus, run_ids: list[int]) -> int:
    with app.app_context():
        return db.session.execute(
            db.select(db.func.count(Run.id)).where(Run.id.in_(run_ids), Run.status == status)
        ).scalar_one()


def test_postgres_restart_while_runs_execute(
    outage_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = outage_stack(proxied=5432)
    app, proxy = stack.app, stack.proxy
    assert proxy is not None
    name = f"nap-{uuid.uuid4().hex[:8]}"
    with app.app_context():
        parser = add_parser(name, "nap.py")
        ids = [runs.create_run(parser, {"seconds": 1.0}).id for _ in range(4)]
        state = tmp_path / "var" / "parser-state" / str(parser.id)
    worker = stack.start_worker(threads=2)
    _wait_until("two parsers start", lambda: _lines(state / "started.log") >= 2, 60)
    # The database stays down until two runs have ended (their parsers write seen.log) and
    # a little longer: their results must be recorded, and the next two claimed, through
    # the outage.
    client = api_client(app)
    with proxy.outage():
        down = client.get(f"/api/v1/runs/{ids[0]}")
        assert down.status_code == 503
        assert down.json["error"]["code"] == "database_unavailable"
        _wait_until("two parsers end", lambda: _lines(state / "seen.log") >= 2, 30)
        time.sleep(1.5)
    assert proxy.cut_connections > 0

    # The web side reconnects by itself (pool pre-ping).
    assert client.get("/api/v1/health").status_code == 200
    with app.app_context():
        db.session.remove()
        for run_id in ids:
            run = wait_for_run(run_id, timeout_s=60)
            assert run.status is RunStatus.COMPLETED, run.error
            assert {f.name for f in run.files} == {"output.txt", "data.bin", "run.log"}
    for run_id in ids:
        assert client.get(f"/api/v1/runs/{run_id}").json["status"] == "completed"
    assert worker.poll() is None
    assert b"database unreachable during" in (tmp_path / "worker.log").read_bytes()
    seen = (state / "seen.log").read_text().split()
    assert sorted(map(int, seen)) == sorted(ids)


def test_duration_is_the_scripts_own_when_its_end_waits_out_a_database_outage(
    outage_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = outage_stack(proxied=5432)
    app, proxy = stack.app, stack.proxy
    assert proxy is not None
    with app.app_context():
        parser = add_parser(f"nap-{uuid.uuid4().hex[:8]}", "nap.py")
        run_id = runs.create_run(parser, {"seconds": 1.0}).id
        state = tmp_path / "var" / "parser-state" / str(parser.id)
    stack.start_worker(threads=1)
    _wait_until("the parser starts", lambda: _lines(state / "started.log") >= 1, 60)
    with proxy.outage():
        _wait_until("the parser ends", lambda: _lines(state / "seen.log") >= 1, 30)
        time.sleep(5.0)  # its end waits to be recorded
        back_at = utcnow()
    with app.app_context():
        db.session.remove()
        run = wait_for_run(run_id, timeout_s=60)
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.finished_at is not None and run.finished_at < back_at
    assert run.duration_s is not None and 1.0 <= run.duration_s < 5.0


def test_scheduler_keeps_firing_after_a_postgres_restart(
    outage_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    from parseq.db.models import OverlapPolicy, ScheduleType

    stack = outage_stack(proxied=5432, PARSEQ_SCHEDULER_SYNC_INTERVAL_S="0.3")
    app, proxy = stack.app, stack.proxy
    assert proxy is not None
    with app.app_context():
        parser = add_parser(
            f"tick-{uuid.uuid4().hex[:8]}",
            "nap.py",
            schedule_type=ScheduleType.INTERVAL,
            interval_s=1,
            overlap=OverlapPolicy.ALLOW,
        )
        parser_id = parser.id

    def created() -> int:
        with app.app_context():
            return db.session.execute(
                db.select(db.func.count(Run.id)).where(Run.parser_id == parser_id)
            ).scalar_one()

    proc = stack.start_scheduler()
    _wait_until("the scheduler fires", lambda: created() >= 2, 30)
    with proxy.outage():
        time.sleep(3.0)
    assert proxy.cut_connections > 0
    after_outage = created()
    _wait_until("it fires again", lambda: created() >= after_outage + 2, 30)
    assert proc.poll() is None, (tmp_path / "scheduler.log").read_text()


@pytest.mark.timeout(360)  # 200 real runs: slow when the shared machine is busy
def test_rabbitmq_restart_during_a_burst_of_200_runs(
    outage_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = outage_stack(proxied=5672)
    app, proxy = stack.app, stack.proxy
    assert proxy is not None
    name = f"burst-{uuid.uuid4().hex[:8]}"
    with app.app_context():
        parser = add_parser(name, "nap.py", default_args={"seconds": 0})
        ids = [runs.create_run(parser).id for _ in range(200)]
        state = tmp_path / "var" / "parser-state" / str(parser.id)
    workers = [stack.start_worker(f"worker{i}.log", threads=3) for i in range(2)]
    _wait_until("some runs completed", lambda: _count(app, RunStatus.COMPLETED, ids) >= 20, 60)
    client = api_client(app)
    with proxy.outage():
        # Enqueued while the broker is down: accepted, kept pending, resent by the sweeper.
        resp = client.post(f"/api/v1/parsers/{name}/runs", json={})
        assert resp.status_code == 202
        ids.append(resp.json["id"])
        with app.app_context():
            assert db.session.get(Run, ids[-1]).enqueued_at is None
        time.sleep(2.0)
    assert proxy.cut_connections >= 2
    assert _count(app, RunStatus.COMPLETED, ids) < 200, "the outage came too late to matter"

    assert sweep_pending(app, older_than_s=0) == 1  # as the scheduler does periodically
    # The web side enqueues again once the broker is back.
    resp = client.post(f"/api/v1/parsers/{name}/runs", json={})
    assert resp.status_code == 202
    ids.append(resp.json["id"])
    try:
        _wait_until(
            "every run completed", lambda: _count(app, RunStatus.COMPLETED, ids) == 202, 240
        )
    except AssertionError:
        with app.app_context():
            stuck = db.session.execute(
                db.select(Run.id, Run.status, Run.enqueued_at, Run.error)
                .where(Run.id.in_(ids), Run.status != RunStatus.COMPLETED)
                .limit(10)
            ).all()
        logs = "".join(
            (tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(len(workers))
        )
        raise AssertionError(f"runs not completed: {stuck}\n{logs}") from None
    seen = (state / "seen.log").read_text().split()
    executions = collections.Counter(map(int, seen))
    assert sorted(executions) == sorted(ids)
    assert set(executions.values()) == {1}, "some run executed more than once"
    assert all(w.poll() is None for w in workers)


def test_queues_are_durable_and_messages_persistent(services_env: dict[str, str]) -> None:
    """What makes queued runs survive a real RabbitMQ restart."""
    import pika

    queue = f"parseq_durable_{uuid.uuid4().hex[:10]}"
    app = create_app(Config.from_env(environ={**services_env, "PARSEQ_QUEUE_NAME": queue}))
    try:
        with app.app_context():
            send_run(12345)
        conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
        channel = conn.channel()
        method, properties, _body = channel.basic_get(queue=queue, auto_ack=True)
        assert method is not None
        assert properties.delivery_mode == 2  # persistent: written to disk
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            channel.queue_declare(queue=queue, durable=False)  # it exists, durable
        assert exc.value.reply_code == 406
        conn.close()
    finally:
        delete_rabbit_queues(queue)


def test_s3_outage_at_upload_keeps_files_and_completes_later(
    outage_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    bucket = f"parseq-outage-{uuid.uuid4().hex[:8]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEYS["s3_access_key_id"],
        aws_secret_access_key=S3_KEYS["s3_secret_access_key"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    running = True
    try:
        stack = outage_stack(
            PARSEQ_STORAGE_URL=f"s3://{bucket}/results",
            PARSEQ_S3_ENDPOINT_URL=endpoint,
            PARSEQ_UPLOAD_ATTEMPTS="2",
            PARSEQ_UPLOAD_BACKOFF_S="0.2",
            PARSEQ_RETRY_INTERVAL_S="0.5",
        )
        app = stack.app
        worker = stack.start_worker(threads=1)
        with app.app_context():
            parser = add_parser(f"nap-{uuid.uuid4().hex[:8]}", "nap.py")
            run_id = runs.create_run(parser, {"seconds": 2.0}).id
        _wait_until("the run executes", lambda: _count(app, RunStatus.RUNNING, [run_id]) == 1, 30)
        s3.stop()
        running = False

        def waiting() -> bool:
            with app.app_context():
                db.session.expire_all()
                run = db.session.get(Run, run_id)
                assert run.status is RunStatus.RUNNING, f"{run.status}: {run.error}"
                return (run.progress_message or "").startswith("waiting for storage")

        _wait_until("the run waits for storage", waiting, 60)
        workdir = tmp_path / "var" / "runs" / str(run_id)
        kept = {p.name for p in workdir.rglob("*") if p.is_file()}
        assert {"output.txt", "data.bin", "run.log", "upload_pending.json"} <= kept
        local = (workdir / "output" / "data.bin").read_bytes()
        time.sleep(1.5)  # a few retry passes against the stopped endpoint
        assert waiting()

        back_at = utcnow()
        s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        s3.start()
        running = True
        with app.app_context():
            run = wait_for_run(run_id, timeout_s=60)
            assert run.status is RunStatus.COMPLETED, run.error
            assert run.finished_at < back_at  # the script's end, not when its files got in
            assert run.progress_message is None
            assert {f.name for f in run.files} == {"output.txt", "data.bin", "run.log"}
        stored = client.get_object(Bucket=bucket, Key=f"results/runs/{run_id}/data.bin")
        assert stored["Body"].read() == local
        assert api_client(app).get(f"/api/v1/runs/{run_id}/files/data.bin").data == local
        _wait_until("the kept files are removed", lambda: not workdir.exists(), 10)
        assert worker.poll() is None
    finally:
        if running:
            s3.stop()
