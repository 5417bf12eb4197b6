"""Uploads that survive a storage outage: retried, then deferred with the files kept on disk."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.errors import StorageError
from parseq.db.models import RunStatus
from parseq.services import runs
from parseq.storage.base import LocalStorage
from parseq.worker import execution, uploads
from tests.conftest import add_parser


class FlakyStorage(LocalStorage):
    """Local storage that fails while ``down`` (or for its first ``failures`` puts)."""

    def __init__(self, root: Path, failures: int = 0) -> None:
        super().__init__(root)
        self.down = False
        self.failures = failures
        self.puts: list[str] = []
        self.lock = threading.Lock()  # a run's files are uploaded from several threads

    def put(self, key: str, path: Path) -> None:
        with self.lock:
            self.puts.append(key)
            fail = self.down or self.failures > 0
            self.failures -= 1
        if fail:
            raise StorageError("connection refused")
        super().put(key, path)


@pytest.fixture
def flaky(sqlite_app: Flask, tmp_path: Path) -> FlakyStorage:
    state = sqlite_app.extensions["parseq"]
    state.config = dataclasses.replace(state.config, upload_attempts=2, upload_backoff_s=0.01)
    state.storage = FlakyStorage(tmp_path / "store")
    return state.storage


def test_a_failed_upload_is_retried(sqlite_app: Flask, flaky: FlakyStorage) -> None:
    flaky.failures = 1
    run = execution.run_now(add_parser("echo", "echo_env.py"))
    assert run.status is RunStatus.COMPLETED
    # Files go up in parallel: whichever put failed first was tried again.
    assert len(flaky.puts) == 5
    assert flaky.puts.count(flaky.puts[0]) == 2
    assert len(run.files) == 4


def test_storage_down_keeps_the_run_running_with_its_files_on_disk(
    sqlite_app: Flask, flaky: FlakyStorage
) -> None:
    flaky.down = True
    run = execution.run_now(add_parser("echo", "echo_env.py"))
    assert run.status is RunStatus.RUNNING  # never completed with its files missing
    assert run.finished_at is None and run.files == []
    assert run.progress_message.startswith("waiting for storage: files kept on the worker")
    workdir = sqlite_app.extensions["parseq"].config.runs_dir / str(run.id)
    assert uploads.is_pending(workdir)
    assert (workdir / "output" / "report.json").exists() and (workdir / "run.log").exists()

    assert uploads.retry_pending(sqlite_app) == 0  # still down: the run keeps waiting
    runs.db.session.refresh(run)
    assert run.status is RunStatus.RUNNING
    assert "(attempt 1)" in run.progress_message

    flaky.down = False
    assert uploads.retry_pending(sqlite_app) == 1
    runs.db.session.refresh(run)
    assert run.status is RunStatus.COMPLETED
    assert run.progress_message is None
    assert sorted(f.name for f in run.files) == [
        "data/items.csv",
        "output.txt",
        "report.json",
        "run.log",
    ]
    assert flaky.exists(f"runs/{run.id}/report.json")
    assert not workdir.exists()
    assert uploads.retry_pending(sqlite_app) == 0


def test_a_failed_run_waiting_for_storage_keeps_its_error(
    sqlite_app: Flask, flaky: FlakyStorage
) -> None:
    flaky.down = True
    run = execution.run_now(add_parser("fail", "fail.py"))
    assert run.status is RunStatus.RUNNING
    flaky.down = False
    uploads.retry_pending(sqlite_app)
    runs.db.session.refresh(run)
    assert (run.status, run.exit_code) == (RunStatus.ERROR, 3)
    assert "the site changed its layout" in run.error


def test_a_run_deleted_while_its_files_wait_leaves_no_objects(
    sqlite_app: Flask, flaky: FlakyStorage
) -> None:
    flaky.down = True
    parser = add_parser("echo", "echo_env.py")
    run = execution.run_now(parser)
    run_id = run.id
    assert run.status is RunStatus.RUNNING
    runs.delete_parser(parser, flaky, cascade=True)
    flaky.down, puts_before = False, len(flaky.puts)
    uploads.retry_pending(sqlite_app)  # the marker goes; the objects it stored go too
    workdir = sqlite_app.extensions["parseq"].config.runs_dir / str(run_id)
    assert not workdir.exists()
    assert len(flaky.puts) > puts_before  # it stored them before finding the run gone
    assert not [p for p in flaky.root.rglob("*") if p.is_file()]
    assert uploads.retry_pending(sqlite_app) == 0
