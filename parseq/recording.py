"""Recording a run's end: its stored files and its final status, in one transaction.

Both the worker that ran it (:mod:`parseq.execution`, through :mod:`parseq.uploads`) and the
upload retrier record here; every write is safe to run again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from flask import current_app
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm.attributes import set_committed_value

from parseq.models import Run, RunFile, RunStatus, db, utcnow
from parseq.reconnect import retry_db
from parseq.retries import schedule_retry
from parseq.runs import get_run

if TYPE_CHECKING:  # uploads imports this module
    from parseq.uploads import Pending, StoredFile

log = logging.getLogger(__name__)

#: Files recorded per INSERT (5 parameters each; SQLite takes 32766 in one statement).
FILE_ROWS_PER_INSERT = 1000


def mark_waiting(run_id: int, message: str) -> None:
    """Say on the run that its files wait for storage, and heartbeat it meanwhile."""

    def mark() -> None:
        db.session.execute(
            db.update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.RUNNING)
            .values(progress_message=message, heartbeat_at=utcnow())
        )
        db.session.commit()

    retry_db(mark, current_app.extensions["parseq"].config.db_retry_s, "mark waiting")


def record_files_and_finish(run_id: int, stored: list[StoredFile], pending: Pending) -> RunStatus:
    """Record the stored files and the run's end together (safe to run again)."""

    def record() -> tuple[RunStatus, bool]:
        run = get_run(run_id)
        _add_files(run_id, stored)
        if run.progress_message and run.progress_message.startswith("waiting for storage"):
            run.progress_message = None
        db.session.flush()
        decided = finish(run, RunStatus(pending.status), pending.exit_code, pending.error)
        if not decided:
            db.session.commit()  # the files are kept even when the run had ended already
        return run.status, decided

    config = current_app.extensions["parseq"].config
    status, decided = retry_db(record, config.db_retry_s, "record run")
    # Not when the reaper finished the run first: the reaper handles its retry.
    if decided and pending.retry:
        schedule_retry(get_run(run_id), config)
    return status


def _add_files(run_id: int, stored: list[StoredFile]) -> None:
    """Record the stored files; ones recorded already (a retried write) are left as they are."""
    rows = [{"run_id": run_id, **dataclasses.asdict(f)} for f in stored]
    if not rows:
        return
    # PostgreSQL and SQLite (the two databases Parseq runs on) both have ON CONFLICT.
    postgres = db.session.get_bind().dialect.name == "postgresql"
    insert = pg_insert if postgres else sqlite_insert
    # Multi-row VALUES statements: as an executemany, ON CONFLICT would cost a round trip per
    # row (SQLAlchemy batches no executemany with such a clause). Each compiles once per row
    # count, and a run has few files.
    for start in range(0, len(rows), FILE_ROWS_PER_INSERT):
        batch = rows[start : start + FILE_ROWS_PER_INSERT]
        db.session.execute(insert(RunFile).values(batch).on_conflict_do_nothing())


def finish(run: Run, status: RunStatus, exit_code: int | None, error: str | None) -> bool:
    """Record how the run ended; False if it had ended already. A cancel request explains any
    end but success; a run the reaper already finished (its heartbeat went stale) keeps the
    reaper's verdict, since the reaper may have started its next attempt."""
    end = {"status": status, "exit_code": exit_code, "error": error, "finished_at": utcnow()}
    if run.env_key is not None:
        end["env_key"] = run.env_key  # a run shorter than a heartbeat has it written here
    # Usually the run is still running: one conditional update, no read first.
    result = db.session.execute(
        db.update(Run)
        .where(Run.id == run.id, Run.status == RunStatus.RUNNING)
        .values(**end)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        db.session.commit()
        for name, value in end.items():
            set_committed_value(run, name, value)
        return True
    db.session.refresh(run)
    if run.status.is_final and run.status is not RunStatus.CANCELLED:
        log.warning("run %s was already %s; outcome %s dropped", run.id, run.status, status)
        return False
    if run.status is RunStatus.CANCELLED and status is not RunStatus.COMPLETED:
        end.update(status=RunStatus.CANCELLED, error="cancelled")
    for name, value in end.items():
        setattr(run, name, value)
    db.session.commit()
    return True
