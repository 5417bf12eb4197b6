"""The run lifecycle: create and enqueue a run, find it, cancel it.

Every entry point (API, admin, CLI, scheduler) creates runs through :func:`create_run`; every worker
executes them through :func:`parseq.worker.execution.execute_run` and records their end through
:mod:`parseq.services.recording`, so status transitions live in these three modules.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from parseq.core import argv
from parseq.core.errors import BadRequest, BrokerError, Conflict, NotFound, ValidationError
from parseq.core.pools import ForkSafeThreadPool
from parseq.db.models import (
    ACTIVE_STATUSES,
    Parser,
    Run,
    RunFile,
    RunStatus,
    RunTrigger,
    db,
    kept_loaded,
    utcnow,
)
from parseq.queue.broker import send_run
from parseq.services import notify
from parseq.storage import state_commit
from parseq.storage.base import Storage

log = logging.getLogger(__name__)


def get_parser(name: str) -> Parser:
    parser = db.session.execute(db.select(Parser).filter_by(name=name)).scalar_one_or_none()
    if parser is None:
        raise NotFound(f"no parser named {name!r}", parser=name)
    return parser


def get_run(run_id: int) -> Run:
    if not 0 < run_id < 2**63:  # beyond any id; the database driver would overflow
        raise NotFound(f"no run with id {run_id}", run_id=run_id)
    run = db.session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run with id {run_id}", run_id=run_id)
    return run


def check_args(args: object) -> dict[str, Any]:
    """Run arguments must be a JSON object with flag-safe names."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise BadRequest("args must be a JSON object", field="args")
    for name in args:
        argv.validate_arg_name(name)
    return args


def new_run(
    parser: Parser,
    args: Mapping[str, Any] | None = None,
    trigger: RunTrigger = RunTrigger.MANUAL,
    scheduled_for: datetime | None = None,
    positional: Sequence[Any] | None = None,
) -> Run:
    """A ``pending`` run (not yet added to the session) with the parser's default args
    overlaid by ``args``, and ``positional`` (None: the parser's default positionals)."""
    merged = {**(parser.default_args or {}), **check_args(dict(args) if args else {})}
    if positional is None:
        positional = parser.default_positional or []
    positional = argv.check_positional(positional)
    limit = current_app.extensions["parseq"].config.max_args_bytes
    size = len(json.dumps(merged).encode()) + len(json.dumps(positional).encode())
    if size > limit:
        # Args travel in an environment variable and argv, which the kernel caps (E2BIG).
        raise ValidationError(
            f"args are {size} bytes of JSON; the limit is {limit} (PARSEQ_MAX_ARGS_BYTES)",
            field="args",
        )
    return Run(
        parser=parser,
        args=merged,
        positional=positional,
        trigger=trigger,
        status=RunStatus.PENDING,
        scheduled_for=scheduled_for,
        code_version=parser.code_version,
    )


def create_run(
    parser: Parser,
    args: Mapping[str, Any] | None = None,
    trigger: RunTrigger = RunTrigger.MANUAL,
    enqueue: bool = True,
    scheduled_for: datetime | None = None,
    positional: Sequence[Any] | None = None,
) -> Run:
    """Insert a ``pending`` run and send it to the broker. If the broker is down the run stays
    pending rather than being lost: the sweeper (``parseq.scheduler.sweeper``) sends it again later.

    ``scheduled_for`` is the due time of a schedule occurrence; a second run for the same
    parser and due time raises ``sqlalchemy.exc.IntegrityError`` (the session is rolled back).
    """
    run = new_run(parser, args, trigger, scheduled_for, positional)
    # Not expired by the commit: the caller shows the run as it was queued, where a reload
    # after sending could already see a worker's changes.
    with kept_loaded() as session:
        session.add(run)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise
    # The columns the INSERT left out are NULL (none has a server default): known, not unloaded.
    state = sa.inspect(run)
    for key in state.unloaded & set(state.mapper.column_attrs.keys()):
        set_committed_value(run, key, None)
    if enqueue:
        enqueue_runs([run], mark_later=True)
    return run


class EnqueuedMarks:
    """Records in batches that the broker took runs' messages (``enqueued_at``), off the
    request's path: one ``UPDATE`` per batch, where each POST paid a transaction of its own.

    A mark lost with its process (or to a database blip) only makes the sweeper send that run
    again after ``PARSEQ_SWEEP_PENDING_AFTER_S``, which the claim makes harmless."""

    def __init__(self, window_s: float = 0.1) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._pending: dict[int, datetime] = {}
        self._scheduled = False
        self._pid = os.getpid()
        self._pool = ForkSafeThreadPool(1, "enqueued-marks")

    def add(self, app: Flask, run_ids: Sequence[int], when: datetime) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked copy: its parent's batch is not ours
                self._pending, self._scheduled, self._pid = {}, False, os.getpid()
            self._pending.update(dict.fromkeys(run_ids, when))
            if self._scheduled:
                return
            self._scheduled = True
        self._pool.submit(self._flush, app)

    def _flush(self, app: Flask) -> None:
        time.sleep(self.window_s)  # let a busy API gather a batch
        with self._lock:
            batch, self._pending, self._scheduled = self._pending, {}, False
        try:
            with app.app_context(), db.engine.begin() as conn:
                conn.execute(
                    db.update(Run)
                    .where(Run.id.in_(batch), Run.enqueued_at.is_(None))
                    .values(enqueued_at=min(batch.values()))
                )
        except Exception:
            log.warning(
                "could not record %d runs as enqueued; the sweeper re-sends them", len(batch)
            )


_MARKS = EnqueuedMarks()


def enqueue_runs(batch: Sequence[Run], mark_later: bool = False) -> int:
    """Send committed runs' messages, then record in one update when the broker took them
    (with ``mark_later``, in a batch of this process's :class:`EnqueuedMarks`: a POST does not
    wait for it). Stops at the first failure (the broker is down; logged once per outage) and
    returns how many were sent."""
    sent: list[int] = []
    for run in batch:
        # From the identity key: ``run.id`` would reload a run expired by a commit.
        run_id = sa.inspect(run).identity[0]
        try:
            send_run(run_id)
        except BrokerError:  # logged by send_run once per outage; the run stays pending
            break
        sent.append(run_id)
    if sent:
        now = utcnow()
        if mark_later:
            _MARKS.add(current_app._get_current_object(), sent, now)
        else:
            # Outside the session, so its runs are not expired and reloaded (a worker may have
            # claimed them by now; callers show the run as it was queued).
            with db.engine.begin() as conn:
                conn.execute(db.update(Run).where(Run.id.in_(sent)).values(enqueued_at=now))
        for run in batch[: len(sent)]:
            set_committed_value(run, "enqueued_at", now)
    return len(sent)


def cancel_run(run: Run) -> Run:
    """Cancel a run: a pending one never starts; a running one's worker kills its process
    group within about ``heartbeat_interval_s + kill_grace_s``. Final runs are a conflict."""
    if run.status.is_final:
        raise Conflict(f"run {run.id} is already {run.status.value}", run_id=run.id)
    result = db.session.execute(
        db.update(Run)
        .where(Run.id == run.id, Run.status == run.status)
        .values(
            status=RunStatus.CANCELLED,
            error="cancelled before it started" if run.status is RunStatus.PENDING else "cancelled",
            finished_at=utcnow() if run.status is RunStatus.PENDING else None,
        )
    )
    db.session.commit()
    db.session.refresh(run)
    if result.rowcount == 0 and not run.status.is_final:
        return cancel_run(run)  # it moved from pending to running meanwhile: try again
    if result.rowcount and run.finished_at is not None:
        # A pending run ends here, with no worker to record it: its end is announced here.
        # (A running one's worker records its end, and announces it then.)
        notify.run_ended(run.id)
    return run


def delete_parser(parser: Parser, storage: Storage, cascade: bool = False) -> int:
    """Delete a parser with its runs and their stored files; return how many runs went.

    The one rule for the API and the admin: refused (:class:`Conflict`) while a run is pending
    or running, unless ``cascade``, which cancels those runs first. The parser row is locked
    (PostgreSQL) so no run is added meanwhile. Rows go first, then the objects: a storage
    failure costs space (logged), never a run row whose files are gone.
    """
    name, parser_id = parser.name, parser.id
    lock = db.select(Parser.id).where(Parser.id == parser_id).with_for_update()
    db.session.execute(lock)
    active = list(
        db.session.execute(
            db.select(Run).where(Run.parser_id == parser_id, Run.status.in_(ACTIVE_STATUSES))
        ).scalars()
    )
    if active and not cascade:
        db.session.rollback()
        raise Conflict(
            f"parser {name!r} has {len(active)} pending or running run(s); cancel them first",
            active_runs=[r.id for r in active],
        )
    for run in active:
        cancel_run(run)  # commits, which ends the lock: take it again
    if active:
        db.session.execute(lock)
    keys = list(
        db.session.execute(
            db.select(RunFile.storage_key).join(Run).where(Run.parser_id == parser_id)
        ).scalars()
    )
    count = db.session.execute(
        db.select(db.func.count(Run.id)).where(Run.parser_id == parser_id)
    ).scalar_one()
    db.session.execute(db.delete(Run).where(Run.parser_id == parser_id))
    db.session.delete(parser)
    db.session.commit()
    for key in keys:
        try:
            storage.delete(key)
        except Exception:  # files left behind cost space, not correctness
            log.warning("could not delete stored %s of parser %s", key, name, exc_info=True)
    try:
        state_commit.drop_stored(storage, parser_id)
    except Exception:
        log.warning("could not delete the stored state of parser %s", name, exc_info=True)
    return count
