"""Creating runs (``parseq.services.runs``): the broker's acceptance is marked in batches."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime

import pytest
import sqlalchemy as sa
from flask import Flask

from parseq.db.models import Parser, Run, db, utcnow
from parseq.services import runs
from tests.conftest import add_parser, sql_sent


def _marked(run_ids: list[int]) -> list[datetime | None]:
    db.session.expire_all()
    rows = db.session.execute(db.select(Run.enqueued_at).where(Run.id.in_(run_ids)))
    return [row.enqueued_at for row in rows]


def _assert_marked_by_one_update(parser: Parser) -> None:
    """Five runs created at once: each shows its mark at once, and the database gets all five
    in one UPDATE of the next batch."""
    with sql_sent(db.engine) as sent:
        created = [runs.create_run(parser) for _ in range(5)]
        # The caller sees the mark at once; the database gets it with the next batch.
        assert all(run.enqueued_at is not None for run in created)
        ids = [run.id for run in created]
        deadline = time.monotonic() + 10
        while None in _marked(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
    updates = [s for s in sent if s.startswith("UPDATE runs SET enqueued_at")]
    assert None not in _marked(ids)
    assert len(updates) == 1


def test_runs_sent_together_are_marked_enqueued_by_one_update(sqlite_app: Flask) -> None:
    _assert_marked_by_one_update(add_parser("echo", "echo_env.py"))


@pytest.mark.services
def test_runs_sent_together_are_marked_enqueued_by_one_update_on_postgresql(
    services_app: Flask,
) -> None:
    """The same through RabbitMQ and PostgreSQL, as ``parseq web`` records marks."""
    with services_app.app_context():
        parser = add_parser(f"marks-{uuid.uuid4().hex[:8]}", "echo_env.py")
        try:
            _assert_marked_by_one_update(parser)
        finally:
            db.session.execute(db.delete(Parser).where(Parser.id == parser.id))  # and its runs
            db.session.commit()


def test_a_mark_that_cannot_be_written_is_left_to_the_sweeper(
    sqlite_app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = runs.create_run(add_parser("echo", "echo_env.py"), enqueue=False)

    def down() -> None:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("database is down"))

    marks = runs.EnqueuedMarks(window_s=0)
    monkeypatch.setattr(type(db.engine), "begin", lambda self: down())
    with caplog.at_level(logging.WARNING, logger="parseq.services.runs"):
        marks.add(sqlite_app, [run.id], utcnow())
        marks._pool.submit(lambda: None).result(timeout=10)  # after the flush
    monkeypatch.undo()
    assert "could not record 1 runs as enqueued; the sweeper re-sends them" in caplog.text
    assert _marked([run.id]) == [None]
