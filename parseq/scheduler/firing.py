"""Turning due schedule occurrences into pending runs, in batches.

A 1-minute cron on 1,000 parsers makes 1,000 occurrences due in the same second. One commit
per run (an fsync each) made them up to 10 s late on this machine; a batch is one query for the
parsers, one for their active runs, one commit of all the new runs and one update of their
``enqueued_at``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from datetime import datetime

from flask import Flask
from sqlalchemy.exc import IntegrityError

from parseq.db.models import (
    ACTIVE_STATUSES,
    OverlapPolicy,
    Parser,
    Run,
    RunTrigger,
    ScheduleSkip,
    db,
    kept_loaded,
    utcnow,
)
from parseq.services import runs

log = logging.getLogger(__name__)

#: Most occurrences turned into runs in one transaction.
MAX_BATCH = 500


def fire(parser_id: int, due: datetime, grace_s: float, now: datetime | None = None) -> Run | None:
    """Turn one due occurrence into a pending, enqueued run; None when it makes none."""
    return fire_many([(parser_id, due)], grace_s, now)[0]


def fire_many(
    occurrences: Sequence[tuple[int, datetime]], grace_s: float, now: datetime | None = None
) -> list[Run | None]:
    """Turn due occurrences ``(parser_id, due)`` into pending, enqueued runs (None for each
    that makes none).

    An occurrence makes no run when its parser is gone, disabled or unscheduled; when it is
    more than ``grace_s`` late (recorded as missed); when the parser's overlap policy is
    ``skip`` and a run of it is pending or running (recorded); or when it already has a run
    (another scheduler, a retry: the unique key on ``(parser_id, scheduled_for)``).
    """
    now = now or utcnow()
    ids = {pid for pid, _ in occurrences}
    parsers = {
        p.id: p for p in db.session.execute(db.select(Parser).where(Parser.id.in_(ids))).scalars()
    }
    busy: dict[int, str] = {}
    exclusive = [pid for pid, p in parsers.items() if p.overlap is not OverlapPolicy.ALLOW]
    if exclusive:
        for pid, run_id, status in db.session.execute(
            db.select(Run.parser_id, Run.id, Run.status).where(
                Run.parser_id.in_(exclusive), Run.status.in_(ACTIVE_STATUSES)
            )
        ):
            busy.setdefault(pid, f"skipped: run {run_id} was still {status.value}")
    made: list[Run | None] = []
    skips: list[ScheduleSkip] = []
    for pid, due in occurrences:
        parser = parsers.get(pid)
        run = None
        late_s = (now - due).total_seconds()
        if parser is None or not parser.enabled or parser.schedule_type is None:
            pass
        elif late_s > grace_s:
            reason = f"missed: {late_s:.0f} s late, beyond the {grace_s:g} s grace"
            skips.append(ScheduleSkip(parser_id=pid, scheduled_for=due, reason=reason))
        elif pid in busy:
            skips.append(ScheduleSkip(parser_id=pid, scheduled_for=due, reason=busy[pid]))
        else:
            run = runs.new_run(parser, trigger=RunTrigger.SCHEDULE, scheduled_for=due)
            if parser.overlap is not OverlapPolicy.ALLOW:
                busy[pid] = "skipped: a run of this parser was just created"
        made.append(run)
    made = _insert([r for r in made if r is not None], made)
    _insert(skips, skips)
    created = [r for r in made if r is not None]
    runs.enqueue_runs(created)
    for run in created:
        log.info(
            "created run %s of %s due %s (%.3f s late)",
            run.id,
            run.parser.name,
            run.scheduled_for,
            (run.queued_at - run.scheduled_for).total_seconds(),
        )
    for skip in skips:
        log.info("parser %s due %s: %s", skip.parser_id, skip.scheduled_for, skip.reason)
    return made


def record_skip(parser: Parser, due: datetime, reason: str) -> None:
    """Record why an occurrence made no run (once per occurrence)."""
    _insert([ScheduleSkip(parser_id=parser.id, scheduled_for=due, reason=reason)], [])


def _insert(rows: Sequence[object], out: list) -> list:  # type: ignore[type-arg]
    """Commit ``rows`` at once; if one clashes with an existing occurrence, commit them one by
    one and drop (in ``out`` too, as None) those that clash."""
    if not rows:
        return out
    db.session.add_all(rows)
    try:
        db.session.commit()
        return out
    except IntegrityError:
        db.session.rollback()
    for row in rows:
        db.session.add(row)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            log.info("occurrence already recorded: %s", row)
            out = [None if r is row else r for r in out]
    return out


class OccurrenceQueue(threading.Thread):
    """A thread that takes due occurrences as they come and fires them in batches."""

    def __init__(self, app: Flask, grace_s: float) -> None:
        super().__init__(name="parseq-occurrences", daemon=True)
        self.app = app
        self.grace_s = grace_s
        self._queue: queue.Queue[tuple[int, datetime]] = queue.Queue()
        self._stopped = threading.Event()

    def put(self, parser_id: int, due: datetime) -> None:
        self._queue.put((parser_id, due))

    def run(self) -> None:
        while not self._stopped.is_set() or not self._queue.empty():
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # A fresh session per batch, not reloading each new run after its commit.
            with self.app.app_context(), kept_loaded():
                try:
                    fire_many(batch, self.grace_s)
                except Exception:
                    db.session.rollback()
                    log.exception("creating runs for %d due occurrence(s) failed", len(batch))
                    self._retry(batch)

    def _retry(self, batch: list[tuple[int, datetime]]) -> None:
        """Put a failed batch back (the database may be briefly down) unless it is so late that
        it would only be recorded as missed, which needs the database too."""
        if self._stopped.wait(1.0):
            return
        now = utcnow()
        for pid, due in batch:
            if (now - due).total_seconds() <= self.grace_s + 60:
                self._queue.put((pid, due))

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=30)
