"""End to end on real services: PostgreSQL + RabbitMQ + a ``parseq worker`` process + S3."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db
from parseq.queue.broker import send_run
from parseq.services import runs
from parseq.web.app import create_app, init_db
from parseq.worker import execution
from parseq.worker.actors import start_worker
from tests.conftest import REDIS_URL, add_parser, api_client, wait_for_run

pytestmark = pytest.mark.services


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_api_run_on_postgres_rabbitmq_and_s3(
    services_app: Flask, worker_process, services_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    client = api_client(services_app)
    with services_app.app_context():
        name = _unique("echo")
        add_parser(name, "echo_env.py", secrets={"API_TOKEN": "s3cret-token"})
    resp = client.post(f"/api/v1/parsers/{name}/runs", json={"args": {"who": "pg", "n": 2}})
    assert resp.status_code == 202
    with services_app.app_context():
        run = wait_for_run(resp.json["id"])
        assert run.status is RunStatus.COMPLETED, run.error
        assert run.worker_id and run.worker_id.split(":")[1] == str(worker_process.pid)
        assert run.started_at >= run.queued_at
        assert run.finished_at >= run.started_at
        keys = {f.name: f.storage_key for f in run.files}
    assert keys["output.txt"] == f"runs/{run.id}/output.txt"

    out = client.get(f"/api/v1/runs/{run.id}/files/output.txt")
    assert out.status_code == 200
    assert out.data == b"hello pg\n"

    report = json.loads(client.get(f"/api/v1/runs/{run.id}/files/report.json").data)
    assert report["secret"] == "s3cret-token"
    assert report["args"] == {"who": "pg", "n": 2}
    assert report["argv"] == ["--who", "pg", "-n", "2"]
    assert report["run_id"] == str(run.id)
    assert report["parser"] == name
    # The worker's own environment has the database URL and S3 keys; the script must not.
    leaked = [k for k in report["env"] if k.startswith(("PARSEQ_DATABASE", "PARSEQ_S3", "AWS"))]
    assert leaked == []
    assert "PARSEQ_SECRET_KEY" not in report["env"]
    for value in (services_env["PARSEQ_DATABASE_URL"], services_env["PARSEQ_S3_SECRET_ACCESS_KEY"]):
        assert value not in json.dumps(report)

    # The objects really are in the bucket, under the configured prefix.
    storage = services_app.extensions["parseq"].storage
    listed = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=f"results/runs/{run.id}/")
    assert sorted(o["Key"].rsplit(f"{run.id}/", 1)[1] for o in listed["Contents"]) == [
        "data/items.csv",
        "output.txt",
        "report.json",
        "run.log",
    ]


def test_timeout_on_the_worker_kills_the_grandchild(services_app: Flask, worker_process) -> None:  # type: ignore[no-untyped-def]
    from tests.test_supervisor import _alive

    with services_app.app_context():
        name = _unique("sleeper")
        parser = add_parser(name, "sleeper.py", timeout_s=1.0)
        run = runs.create_run(parser)
        run = wait_for_run(run.id)
        assert run.status is RunStatus.TIMEOUT
        assert "timed out after 1 s" in run.error
        config = services_app.extensions["parseq"].config
        state = config.state_dir / str(parser.id)
    pid = int((state / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_redelivered_message_for_a_finished_run_does_nothing(
    services_app: Flask, worker_process
) -> None:  # type: ignore[no-untyped-def]
    with services_app.app_context():
        parser = add_parser(_unique("echo"), "echo_env.py")
        run = wait_for_run(runs.create_run(parser).id)
        assert run.status is RunStatus.COMPLETED
        finished_at, n_files = run.finished_at, len(run.files)
        send_run(run.id)  # as RabbitMQ would redeliver
        assert execution.execute_run(run.id) is None  # and as a second worker would see it
        time.sleep(1.0)
        db.session.expire_all()
        again = db.session.get(Run, run.id)
        assert again.finished_at == finished_at
        assert len(again.files) == n_files


def test_failing_and_missing_scripts_on_services(services_app: Flask, worker_process) -> None:  # type: ignore[no-untyped-def]
    with services_app.app_context():
        fail = wait_for_run(runs.create_run(add_parser(_unique("fail"), "fail.py")).id)
        ghost = wait_for_run(runs.create_run(add_parser(_unique("ghost"), "nope/ghost.py")).id)
        assert (fail.status, fail.exit_code) == (RunStatus.ERROR, 3)
        assert "ValueError: the site changed its layout" in fail.error
        assert ghost.status is RunStatus.ERROR
        assert ghost.error == "script parsers/nope/ghost.py does not exist"


def test_redis_broker_runs_a_parser(tmp_path: Path, pg_url: str, make_config) -> None:  # type: ignore[no-untyped-def]
    queue = _unique("parseq-redis")
    app = create_app(make_config(broker_url=REDIS_URL, queue_name=queue))
    init_db(app)
    worker = start_worker(app, threads=1)
    try:
        with app.app_context():
            run = wait_for_run(runs.create_run(add_parser("echo", "echo_env.py")).id)
            assert run.status is RunStatus.COMPLETED, run.error
            assert run.file("output.txt").size == len(b"hello world\n")
    finally:
        worker.stop()
        app.extensions["parseq"].broker.flush_all()


def test_config_from_env_drives_the_whole_stack(services_env: dict[str, str]) -> None:
    config = Config.from_env(environ=services_env)
    assert config.broker_url.startswith("amqp://")
    assert config.storage_url.startswith("s3://")
    assert config.database_url.startswith("postgresql+psycopg2://")
