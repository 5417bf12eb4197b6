"""Prometheus metrics at /metrics: counts after a known set of runs (embedded, and counted by
a real worker process on PostgreSQL + RabbitMQ while another process serves them), and who
may scrape."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from parseq.core.config import Config
from parseq.db.models import RunStatus, RunTrigger
from parseq.services import runs
from tests.conftest import add_parser, running, wait_for_run


def _samples(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.data
    assert resp.content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _runs_total(parser: str, status: str, trigger: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"parser": parser, "status": status, "trigger": trigger}
    return ("parseq_runs_total", tuple(sorted(labels.items())))


def _wait_for(client: Any, key: Any, value: float, timeout_s: float = 30.0) -> dict[Any, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = _samples(client)
        if samples.get(key) == value or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_metrics_count_a_known_set_of_runs(make_config: Callable[..., Config]) -> None:
    with running(make_config()) as app:
        add_parser("good", "items.py")
        add_parser("bad", "fail.py")
        for name, trigger in [
            ("good", RunTrigger.API),
            ("good", RunTrigger.API),
            ("bad", RunTrigger.MANUAL),
        ]:
            wait_for_run(runs.create_run(runs.get_parser(name), trigger=trigger).id)
        client = app.test_client()
        samples = _wait_for(client, _runs_total("bad", "error", "manual"), 1.0)
        samples = _wait_for(client, _runs_total("good", "completed", "api"), 2.0)
        assert samples[_runs_total("good", "completed", "api")] == 2.0
        assert samples[_runs_total("bad", "error", "manual")] == 1.0
        duration = ("parseq_run_duration_seconds_count", (("parser", "good"),))
        assert samples[duration] == 2.0
        inf = ("parseq_run_duration_seconds_bucket", (("le", "+Inf"), ("parser", "good")))
        assert samples[inf] == 2.0
        assert samples[("parseq_runs_running", ())] == 0.0
        assert samples[("parseq_queue_depth", ())] == 0.0
        assert samples[("parseq_workers_alive", ())] == 1.0


def test_env_builds_are_counted(env_config: Config) -> None:
    (env_config.parsers_dir).mkdir(parents=True, exist_ok=True)
    (env_config.parsers_dir / "hello.py").write_text("print('hello')\n")
    with running(env_config) as app:
        add_parser("built", "hello.py")
        run = wait_for_run(runs.create_run(runs.get_parser("built")).id, timeout_s=120)
        assert run.status is RunStatus.COMPLETED, run.error
        run = wait_for_run(runs.create_run(runs.get_parser("built")).id)  # a cache hit
        samples = _samples(app.test_client())
        assert samples[("parseq_env_builds_total", (("result", "ok"),))] == 1.0
        assert samples[("parseq_env_build_duration_seconds_count", ())] == 1.0
        assert samples[("parseq_env_build_duration_seconds_sum", ())] > 0


def test_metrics_need_the_token_or_an_allowed_network(make_config: Callable[..., Config]) -> None:
    with running(make_config(metrics_token="scrape-me")) as app:
        client = app.test_client()
        assert client.get("/metrics").status_code == 403
        resp = client.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert resp.status_code == 403
        assert resp.json["error"]["code"] == "forbidden"
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and b"parseq_runs_running" in ok.data
    with running(make_config(metrics_networks="10.0.0.0/8")) as app:
        client = app.test_client()
        assert client.get("/metrics").status_code == 403
        remote = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
        assert remote.status_code == 200


@pytest.mark.services
def test_runs_counted_by_a_worker_process_are_served_by_the_web_process(
    services_app: Flask, worker_process: Any
) -> None:
    from parseq.db.models import db

    name = f"counted-{uuid.uuid4().hex[:8]}"
    with services_app.app_context():
        parser = add_parser(name, "items.py")
        ids = [runs.create_run(parser).id for _ in range(3)]
        assert all(wait_for_run(i).status is RunStatus.COMPLETED for i in ids)
        db.session.rollback()
        client = services_app.test_client()
        samples = _wait_for(client, _runs_total(name, "completed", "manual"), 3.0)
        assert samples[_runs_total(name, "completed", "manual")] == 3.0
        assert samples[("parseq_workers_alive", ())] >= 1.0
