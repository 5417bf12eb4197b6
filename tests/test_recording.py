"""Recording a run's end (``parseq.services.recording``): its files and final status, safe to
repeat."""

from __future__ import annotations

import pytest
from flask import Flask

from parseq.db.models import RunStatus
from parseq.services import recording, runs
from parseq.worker import execution
from tests.conftest import add_parser


@pytest.mark.parametrize("few_files", [4, 0], ids=["executemany", "multi-row-values"])
@pytest.mark.parametrize("app_fixture", ["sqlite_app", "services_app"])
def test_recording_the_files_again_keeps_one_row_each(
    app_fixture: str,
    few_files: int,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write retried after a lost commit acknowledgement must not duplicate the files, both
    when a few files are an executemany and when more are multi-row statements."""
    app: Flask = request.getfixturevalue(app_fixture)
    monkeypatch.setattr(recording, "FEW_FILES", few_files)
    monkeypatch.setattr(recording, "FILE_ROWS_PER_INSERT", 2)  # 3 files: 2 statements
    with app.app_context():
        name = f"files-{app_fixture}-{few_files}"
        run = runs.create_run(add_parser(name, "echo_env.py"), enqueue=False)
        execution.claim(run.id)
        stored = [
            recording.StoredFile("output.txt", 3, "a" * 64, f"runs/{run.id}/output.txt"),
            recording.StoredFile("run.log", 0, "b" * 64, f"runs/{run.id}/run.log"),
        ]
        pending = recording.Pending(run.id, "completed", 0, None, {}, retry=False)
        assert recording.record_files_and_finish(run.id, stored, pending) is RunStatus.COMPLETED
        again = [*stored, recording.StoredFile("extra.csv", 1, "c" * 64, "k")]
        assert recording.record_files_and_finish(run.id, again, pending) is RunStatus.COMPLETED
        runs.db.session.expire_all()
        files = runs.get_run(run.id).files
        assert [(f.name, f.size) for f in files] == [
            ("extra.csv", 1),
            ("output.txt", 3),
            ("run.log", 0),
        ]
