"""The admin on the production stack: PostgreSQL, RabbitMQ, S3 and a real worker process."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest
from flask import Flask

from parseq.models import Run, db
from tests.conftest import add_parser, admin_client, wait_for_run

pytestmark = pytest.mark.services


def test_run_now_on_rabbitmq_and_download_from_s3(
    services_app: Flask, worker_process: subprocess.Popen[bytes]
) -> None:
    name = f"echo-{uuid.uuid4().hex[:8]}"
    with services_app.app_context():
        parser_id = add_parser(name, "echo_env.py").id
    client = admin_client(services_app)
    dashboard = client.get("/admin/").data.decode()
    assert re.search(r'id="queue-depth">\d+<', dashboard)  # RabbitMQ answers the depth

    resp = client.post(
        f"/admin/parsers/run/{parser_id}",
        data={"args": '{"who": "rabbit"}', "csrf_token": client.csrf_token},
    )
    assert resp.status_code == 302
    run_id = int(resp.headers["Location"].rsplit("=", 1)[1])
    with services_app.app_context():
        run = wait_for_run(run_id)
        assert run.status.value == "completed", run.error
        assert db.session.get(Run, run_id).file("output.txt").storage_key
    page = client.get(f"/admin/runs/details/?id={run_id}").data.decode()
    assert "hello rabbit" in page and "status-completed" in page
    assert client.get(f"/admin/runs/{run_id}/files/output.txt").data == b"hello rabbit\n"
