"""The admin on the production stack: PostgreSQL, RabbitMQ, S3 and a real worker process."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest
from flask import Flask

from parseq.db.models import Parser, Run, RunStatus, db
from tests.conftest import add_parser, admin_client, sql_sent, wait_for_run

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


def test_runs_list_numbers_pages_from_the_estimate_on_a_big_table(
    services_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``estimate_count_above`` runs, the unfiltered list takes PostgreSQL's row estimate
    instead of count(*) (a full scan of a million rows); filtered lists still count."""
    from sqlalchemy import text

    from parseq.web.admin.admin_runs import RunView, estimated_runs

    with services_app.app_context():
        parser = add_parser(f"many-{uuid.uuid4().hex[:8]}", "echo_env.py")
        parser_id = parser.id
        # Finished runs: pending ones would be re-sent by other tests' sweeps of this database.
        db.session.add_all([Run(parser=parser, status=RunStatus.COMPLETED) for _ in range(120)])
        db.session.commit()
        db.session.execute(text("ANALYZE runs"))
        db.session.commit()
        estimate = estimated_runs()
        exact = db.session.execute(db.select(db.func.count(Run.id))).scalar()
        assert estimate is not None and estimate > 100
        engine = db.engine
    monkeypatch.setattr(RunView, "estimate_count_above", 100)
    try:
        client = admin_client(services_app)
        with sql_sent(engine) as sent:
            page = client.get("/admin/runs/").data.decode()
        statements = [s.lower() for s in sent]
        assert "pg_class" in " ".join(statements)
        assert not [s for s in statements if "count(" in s and "from runs" in s]
        last_page = -(-estimate // RunView.page_size)
        assert f"page={last_page - 1}" in page  # the pager's last link, from the estimate

        with sql_sent(engine) as sent:
            filtered = client.get(f"/admin/runs/?flt0_0={parser_id}")
        assert filtered.status_code == 200
        assert [s for s in sent if "count(" in s.lower() and "from runs" in s.lower()]
    finally:
        with services_app.app_context():
            db.session.execute(db.delete(Parser).where(Parser.id == parser_id))  # and its runs
            db.session.commit()
    assert exact >= 120
