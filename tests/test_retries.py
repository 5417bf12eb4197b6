"""Retries per parser: the decision, the backoff, and new attempts through a real worker."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db
from parseq.services import runs
from parseq.services.retries import backoff_s, should_retry
from parseq.worker import execution
from tests.conftest import add_parser, api_client, running, wait_for_run


@pytest.mark.parametrize(
    ("status", "attempt", "max_retries", "on_timeout", "expected"),
    [
        (RunStatus.ERROR, 1, 2, False, True),
        (RunStatus.ERROR, 3, 2, False, False),  # attempts used up: 1 try + 2 retries
        (RunStatus.ERROR, 1, 0, False, False),
        (RunStatus.TIMEOUT, 1, 2, False, False),  # timeouts retry only when configured
        (RunStatus.TIMEOUT, 1, 2, True, True),
        (RunStatus.CANCELLED, 1, 5, True, False),
        (RunStatus.COMPLETED, 1, 5, True, False),
    ],
)
def test_should_retry(
    status: RunStatus, attempt: int, max_retries: int, on_timeout: bool, expected: bool
) -> None:
    assert should_retry(status, attempt, max_retries, on_timeout) is expected


def test_backoff_grows_exponentially_within_its_cap_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (10, 30.0)]:
        delays = [backoff_s(attempt, 2.0, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # really jittered


SCRIPTS = {
    # Fails on its first attempt, succeeds on the next (the state dir outlives a run).
    "flaky.py": (
        "import os, pathlib, sys\n"
        "mark = pathlib.Path(os.environ['PARSEQ_STATE_DIR'], 'tried')\n"
        "if not mark.exists():\n"
        "    mark.write_text('1')\n"
        "    print('RuntimeError: first try fails', file=sys.stderr)\n"
        "    sys.exit(1)\n"
        "print('second try works')\n"
    ),
    "always_fails.py": "import sys\nprint('boom', file=sys.stderr)\nsys.exit(2)\n",
    "slow.py": "import time\ntime.sleep(30)\n",
}


@pytest.fixture
def retry_app(make_config: Callable[..., Config], tmp_path: Path) -> Iterator[Flask]:
    """The embedded mode with short backoffs and a parsers folder of this test's own."""
    parsers = tmp_path / "parsers"
    parsers.mkdir()
    for name, code in SCRIPTS.items():
        (parsers / name).write_text(code)
    config = make_config(parsers_dir=parsers, retry_backoff_base_s=0.2, retry_backoff_max_s=0.5)
    with running(config) as app:
        yield app


def _attempts(parser_name: str, timeout_s: float = 30.0, count: int = 1) -> list[Run]:
    """Wait until the parser has ``count`` final runs and no active one; all its runs, oldest
    first."""
    deadline = time.monotonic() + timeout_s
    while True:
        db.session.expire_all()
        parser = runs.get_parser(parser_name)
        all_runs = sorted(parser.runs, key=lambda r: r.id)
        done = [r for r in all_runs if r.status.is_final]
        if (len(done) >= count and len(done) == len(all_runs)) or time.monotonic() > deadline:
            return all_runs
        time.sleep(0.05)


def test_a_failed_run_is_retried_as_a_new_attempt_that_completes(retry_app: Flask) -> None:
    add_parser("flaky", "flaky.py", max_retries=2)
    resp = api_client(retry_app).post("/api/v1/parsers/flaky/runs", json={"args": {"x": 1}})
    assert resp.status_code == 202
    first, second = _attempts("flaky", count=2)
    assert (first.status, first.attempt) == (RunStatus.ERROR, 1)
    assert "first try fails" in first.error
    assert (second.status, second.attempt) == (RunStatus.COMPLETED, 2)
    assert second.retry_of_id == first.id
    assert second.args == {"x": 1}
    assert second.not_before >= first.finished_at
    assert second.started_at >= second.not_before
    shown = api_client(retry_app).get(f"/api/v1/runs/{second.id}").json
    assert shown["attempt"] == 2
    assert shown["retry_of"] == first.id
    assert "first try fails" in shown["previous_error"]


def test_retries_stop_after_max_retries(retry_app: Flask) -> None:
    add_parser("always-fails", "always_fails.py", max_retries=2)
    runs.create_run(runs.get_parser("always-fails"))
    attempts = _attempts("always-fails", count=3)
    assert [(r.attempt, r.status) for r in attempts] == [
        (1, RunStatus.ERROR),
        (2, RunStatus.ERROR),
        (3, RunStatus.ERROR),
    ]
    assert [r.retry_of_id for r in attempts] == [None, attempts[0].id, attempts[1].id]
    time.sleep(1.0)  # longer than the capped backoff: no fourth attempt comes
    assert len(_attempts("always-fails", count=3)) == 3


def test_timeouts_retry_only_when_the_parser_says_so(retry_app: Flask) -> None:
    add_parser("slow", "slow.py", max_retries=1, timeout_s=0.5)
    add_parser("slow-retried", "slow.py", max_retries=1, timeout_s=0.5, retry_on_timeout=True)
    runs.create_run(runs.get_parser("slow"))
    runs.create_run(runs.get_parser("slow-retried"))
    assert [r.status for r in _attempts("slow-retried", count=2)] == [RunStatus.TIMEOUT] * 2
    assert [r.status for r in _attempts("slow", count=1)] == [RunStatus.TIMEOUT]


def test_a_cancelled_run_is_not_retried(retry_app: Flask) -> None:
    add_parser("slow", "slow.py", max_retries=3)
    run = runs.create_run(runs.get_parser("slow"))
    deadline = time.monotonic() + 10
    while runs.get_run(run.id).status is not RunStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
        db.session.expire_all()
    assert api_client(retry_app).post(f"/api/v1/runs/{run.id}/cancel").status_code == 200
    assert wait_for_run(run.id).status is RunStatus.CANCELLED
    time.sleep(1.0)
    assert [r.status for r in _attempts("slow")] == [RunStatus.CANCELLED]


def test_a_retry_that_comes_early_waits_for_its_backoff(sqlite_app: Flask) -> None:
    from datetime import timedelta

    from parseq.db.models import utcnow

    parser = add_parser("echo", "echo_env.py")
    run = runs.create_run(parser, enqueue=False)
    run.not_before = utcnow() + timedelta(seconds=60)
    db.session.commit()
    assert execution.execute_run(run.id) is None  # sent back to the broker for the time left
    assert runs.get_run(run.id).status is RunStatus.PENDING
