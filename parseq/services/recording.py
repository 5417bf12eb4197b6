"""Recording a run's end: its stored files and its final status, in one transaction.

Both the worker that ran it (:mod:`parseq.worker.execution`, through :mod:`parseq.worker.uploads`)
and the upload retrier record here; every write is safe to run again. :class:`StoredFile` and
:class:`Pending` are the values they hand over.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm.attributes import set_committed_value

from parseq.core.errors import NotFound
from parseq.db import statements
from parseq.db.models import Run, RunFile, RunStatus, db, utcnow
from parseq.db.reconnect import retry_db
from parseq.services import notify
from parseq.services.retries import schedule_retry
from parseq.services.runs import get_run

log = logging.getLogger(__name__)

#: Up to this many files (most runs have two or three) are recorded by an executemany of one
#: statement built once: a round trip a row, but no multi-row VALUES statement to build and
#: compile (SQLAlchemy compiles one anew at every execution; bench/RESULTS.md, dispatch).
FEW_FILES = 4
#: More files are recorded by multi-row VALUES statements of this many rows (5 parameters
#: each; SQLite takes 32766 in one statement), so a thousand files cost one round trip.
FILE_ROWS_PER_INSERT = 1000


@dataclass(frozen=True)
class StoredFile:
    """A file as it was stored: what ``RunFile`` records."""

    name: str
    size: int
    sha256: str
    storage_key: str


@dataclass(frozen=True)
class Pending:
    """A run whose files wait for storage: what the marker holds."""

    run_id: int
    status: str
    exit_code: int | None
    error: str | None
    #: File name -> path relative to the run's working folder.
    files: dict[str, str]
    attempts: int = 0
    #: Whether a failed outcome may start the next attempt (``parseq run`` makes one only).
    retry: bool = True
    #: What the run should tell its user (``Run.warnings``).
    warnings: list[str] = field(default_factory=list)
    #: When the parser's process ended (ISO 8601, UTC): the run's ``finished_at``, so waiting
    #: out a storage or database outage does not count in its ``duration_s``.
    ended_at: str | None = None


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
        if pending.warnings:
            run.warnings = list(pending.warnings)
        db.session.flush()
        ended_at = datetime.fromisoformat(pending.ended_at) if pending.ended_at else None
        decided = finish(run, RunStatus(pending.status), pending.exit_code, pending.error, ended_at)
        if not decided:
            db.session.commit()  # the files are kept even when the run had ended already
        return run.status, decided

    config = current_app.extensions["parseq"].config
    try:
        status, decided = retry_db(record, config.db_retry_s, "record run")
    except (NotFound, sa.exc.IntegrityError) as exc:  # a file row's run is gone, say
        db.session.rollback()
        if db.session.execute(db.select(Run.id).where(Run.id == run_id)).first() is not None:
            raise
        # Deleted with its parser while it ran: its objects would be orphans.
        _delete_objects(run_id, stored)
        raise NotFound(f"run {run_id} was deleted", run_id=run_id) from exc
    # Not when the reaper finished the run first: the reaper handles its retry.
    if decided and pending.retry:
        schedule_retry(get_run(run_id), config)
    return status


def _delete_objects(run_id: int, stored: list[StoredFile]) -> None:
    storage = current_app.extensions["parseq"].storage
    for f in stored:
        try:
            storage.delete(f.storage_key)
        except Exception:  # files left behind cost space, not correctness
            log.warning("run %s: could not delete stored %s", run_id, f.storage_key, exc_info=True)


def _add_files(run_id: int, stored: list[StoredFile]) -> None:
    """Record the stored files; ones recorded already (a retried write) are left as they are."""
    rows = [{"run_id": run_id, **dataclasses.asdict(f)} for f in stored]
    if not rows:
        return
    # PostgreSQL and SQLite (the two databases Parseq runs on) both have ON CONFLICT.
    dialect = db.session.get_bind().dialect.name
    if len(rows) <= FEW_FILES:
        db.session.execute(statements.INSERT_RUN_FILE[dialect], rows)
        return
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    for start in range(0, len(rows), FILE_ROWS_PER_INSERT):
        batch = rows[start : start + FILE_ROWS_PER_INSERT]
        db.session.execute(insert(RunFile.__table__).values(batch).on_conflict_do_nothing())


def finish(
    run: Run,
    status: RunStatus,
    exit_code: int | None,
    error: str | None,
    ended_at: datetime | None = None,
) -> bool:
    """Record how the run ended; False if it had ended already. ``finished_at`` is
    ``ended_at`` (when the parser's process ended), else now. A cancel request explains any
    end but success; a run the reaper already finished (its heartbeat went stale) keeps the
    reaper's verdict, since the reaper may have started its next attempt."""
    end = {
        "status": status,
        "exit_code": exit_code,
        "error": error,
        "finished_at": ended_at or utcnow(),
    }
    if run.env_key is not None:
        end["env_key"] = run.env_key  # a run shorter than a heartbeat has it written here
    # Usually the run is still running: one conditional update, no read first.
    result = db.session.execute(statements.FINISH_RUN, {"run_id": run.id, "env_key": None, **end})
    if result.rowcount == 1:
        db.session.commit()
        for name, value in end.items():
            set_committed_value(run, name, value)
        notify.run_ended(run.id)  # a message to the notification queue: never fails the run
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
    notify.run_ended(run.id)
    return True
