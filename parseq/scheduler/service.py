"""The scheduler service: turns due schedule occurrences into ``pending`` runs, nothing else.

APScheduler 3 (``BackgroundScheduler``, in-memory job store) keeps one job per scheduled parser;
the database is the truth. A periodic sync reloads schedules, so an edit, disable or delete
takes effect within ``scheduler_sync_interval_s`` without a restart.

No duplicates: an occurrence is (parser, due time), a unique key on ``runs``, so a second
scheduler, a restart or a retry cannot create a second run for it. Of two scheduler processes on
PostgreSQL one is active and the other standby, decided by a session-level advisory lock
(``parseq.db.locks.SCHEDULER_LEADER``) that PostgreSQL frees when the active process dies. SQLite
means one scheduler process.

No losses: a run the broker did not take stays ``pending`` and the sweeper re-sends it; after
downtime, missed occurrences coalesce into one catch-up run if the latest is within
``schedule_grace_s`` (see :func:`parseq.services.schedules.plan_start`); missed and overlap-skipped
occurrences are recorded as ``ScheduleSkip`` rows.

Pure schedule logic lives in ``parseq.services.schedules``, run creation in
``parseq.scheduler.firing``, the
sweeper in ``parseq.scheduler.sweeper``; this module re-exports what callers need.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import sqlalchemy as sa
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask
from sqlalchemy.pool import NullPool

from parseq.db import locks
from parseq.db.models import Parser, Run, ScheduleSkip, db, utcnow
from parseq.scheduler.firing import OccurrenceQueue, fire, fire_many, record_skip
from parseq.scheduler.sweeper import sweep_pending
from parseq.services.schedules import (
    Plan,
    Schedule,
    fire_times,
    next_fire_times,
    parse_interval,
    plan_start,
    validate_schedule,
)

__all__ = [
    "Plan",
    "Schedule",
    "SchedulerService",
    "fire",
    "fire_many",
    "fire_times",
    "next_fire_times",
    "parse_interval",
    "plan_start",
    "sweep_pending",
    "validate_schedule",
]

log = logging.getLogger(__name__)

OCCURRENCES = "occurrences"
#: What Schedule.from_parser reads (besides enabled, which the sync filters on).
_SCHEDULE_COLUMNS = (
    Parser.enabled,
    Parser.created_at,
    Parser.schedule_type,
    Parser.cron,
    Parser.interval_s,
    Parser.run_at,
    Parser.schedule_start_at,
    Parser.schedule_end_at,
    Parser.timezone,
    Parser.overlap,
)


class LeaderLock:
    """Whether this process is the active scheduler.

    PostgreSQL: a session-level advisory lock held on a connection of its own (no pool, so the
    lock is never left on a pooled connection); PostgreSQL releases it when the holder's
    connection or process dies. SQLite: always this process.
    """

    def __init__(self, url: str, application_name: str = "parseq") -> None:
        self.shared = url.startswith("postgresql")
        self.engine = (
            sa.create_engine(
                url, poolclass=NullPool, connect_args={"application_name": application_name}
            )
            if self.shared
            else None
        )
        self.conn: sa.Connection | None = None

    def hold(self) -> bool:
        """Take the lock if free, or check it is still ours; True while we are active."""
        if self.engine is None:
            return True
        try:
            if self.conn is None:
                conn = self.engine.connect()
                got = conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": locks.SCHEDULER_LEADER}
                ).scalar()
                conn.commit()
                if not got:
                    conn.close()
                    return False
                self.conn = conn
            else:
                self.conn.execute(sa.text("SELECT 1"))
                self.conn.commit()
            return True
        except sa.exc.DBAPIError:
            log.warning("scheduler lock connection failed; standing by", exc_info=True)
            self.release()
            return False

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                self.conn.close()  # NullPool: closes the session, which frees the lock
            self.conn = None


class _QueueExecutor(BaseExecutor):
    """Hands each due occurrence to the batching queue with its due time (APScheduler 3 does
    not pass it to jobs). Jobs coalesce, so only the latest of the run times is due."""

    def __init__(self, sink: OccurrenceQueue) -> None:
        super().__init__()
        self.sink = sink

    def submit_job(self, job: Any, run_times: list[datetime]) -> None:
        self.sink.put(job.kwargs["parser_id"], run_times[-1].astimezone(dt_timezone.utc))

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        raise NotImplementedError  # submit_job does it all


def _occurrence(parser_id: int) -> None:
    """The callable of occurrence jobs; never called (``_QueueExecutor`` takes them)."""


@dataclass
class _Maintenance:
    name: str
    func: Callable[[Flask], object]
    interval_s: float


class SchedulerService:
    """The scheduler of one process: start it, and stop it at exit."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.config = app.extensions["parseq"].config
        self.lock = LeaderLock(self.config.database_url, self.config.application_name)
        self.active = False
        self._jobs: dict[int, Schedule] = {}
        self._bad: dict[int, str] = {}
        self._parsed: dict[int, tuple[tuple[Any, ...], Schedule]] = {}
        self._sync_lock = threading.Lock()
        self.occurrences = OccurrenceQueue(app, self.config.schedule_grace_s)
        self.scheduler = BackgroundScheduler(
            timezone=dt_timezone.utc,
            executors={
                "default": ThreadPoolExecutor(2),
                OCCURRENCES: _QueueExecutor(self.occurrences),
            },
        )
        # Periodic maintenance, run by the active scheduler only. Add more with
        # add_maintenance() before start() (e.g. the reaper of runs with stale heartbeats).
        self.maintenance: list[_Maintenance] = [
            _Maintenance("sweep_pending", sweep_pending, self.config.sweep_interval_s)
        ]

    def add_maintenance(
        self, name: str, func: Callable[[Flask], object], interval_s: float
    ) -> None:
        """Run ``func(app)`` every ``interval_s`` seconds while this scheduler is active."""
        self.maintenance.append(_Maintenance(name, func, interval_s))
        if self.scheduler.running:
            self._schedule_maintenance(self.maintenance[-1])

    def start(self) -> None:
        self.occurrences.start()
        self.scheduler.start()
        self.scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.config.scheduler_sync_interval_s,
            id="sync",
            next_run_time=datetime.now(dt_timezone.utc),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        for job in self.maintenance:
            self._schedule_maintenance(job)
        log.info("scheduler started (sync every %gs)", self.config.scheduler_sync_interval_s)

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)
        self.occurrences.stop()
        self.lock.release()
        if self.lock.engine is not None:
            self.lock.engine.dispose()
        self.active = False
        log.info("scheduler stopped")

    def tick(self) -> None:
        """Keep or take the active role, then sync schedules; on losing it, drop every job."""
        with self._sync_lock:
            if not self.lock.hold():
                if self.active:
                    log.warning("scheduler lost the active role; standing by")
                    self._drop_all()
                self.active = False
                return
            if not self.active:
                how = "holds the PostgreSQL lock" if self.lock.shared else "SQLite: the only one"
                log.info("scheduler is active (%s)", how)
                self.active = True
            try:
                with self.app.app_context():
                    self.sync()
            except Exception:
                log.exception(
                    "schedule sync failed; retrying in %gs", self.config.scheduler_sync_interval_s
                )

    def sync(self) -> None:
        """Make the jobs match the enabled schedules in the database.

        Reads only the schedule columns and re-validates a schedule only when they changed, so
        a sync of 1,000 parsers costs one light query.
        """
        wanted: dict[int, Schedule] = {}
        names: dict[int, str] = {}
        stamps: dict[int, datetime] = {}
        for row in db.session.execute(
            db.select(Parser.id, Parser.name, Parser.updated_at, *_SCHEDULE_COLUMNS).where(
                Parser.enabled.is_(True), Parser.schedule_type.is_not(None)
            )
        ):
            raw = tuple(row[3:])
            cached = self._parsed.get(row.id)
            if cached is None or cached[0] != raw:
                try:
                    cached = (raw, Schedule.from_parser(row))
                except Exception as exc:
                    message = getattr(exc, "message", str(exc))
                    if self._bad.get(row.id) != message:
                        log.warning("parser %s has an invalid schedule: %s", row.name, message)
                        self._bad[row.id] = message
                    continue
                self._parsed[row.id] = cached
            wanted[row.id] = cached[1]
            names[row.id] = row.name
            stamps[row.id] = row.updated_at
        for parser_id in set(self._jobs) - set(wanted):
            self._remove(parser_id)
        changed = [pid for pid, s in wanted.items() if self._jobs.get(pid) != s]
        if not changed:
            return
        last = self._last_occurrences(changed)
        now = utcnow()
        for pid in changed:
            since = max(filter(None, (stamps[pid], last.get(pid))))
            self._add(pid, names[pid], wanted[pid], since, now)

    def _add(
        self, parser_id: int, name: str, schedule: Schedule, since: datetime, now: datetime
    ) -> None:
        plan = plan_start(schedule, since, now, self.config.schedule_grace_s)
        if plan.missed is not None:
            parser = db.session.get(Parser, parser_id)
            if parser is not None:
                record_skip(
                    parser,
                    plan.missed,
                    "missed: no scheduler was running"
                    + (" (coalesced into one catch-up run)" if plan.catch_up else ""),
                )
        first = plan.catch_up or plan.next
        self._remove(parser_id)
        if first is None:
            return  # a one-off that already ran, or a schedule past its end
        self.scheduler.add_job(
            _occurrence,
            schedule.trigger(),
            id=f"parser-{parser_id}",
            name=name,
            kwargs={"parser_id": parser_id},
            executor=OCCURRENCES,
            next_run_time=first,
            coalesce=True,
            max_instances=3,
            misfire_grace_time=None,  # lateness is judged in fire() against schedule_grace_s
        )
        self._jobs[parser_id] = schedule
        log.info("scheduled %s: %s first due %s", name, schedule.type.value, first.isoformat())

    def _remove(self, parser_id: int) -> None:
        if self._jobs.pop(parser_id, None) is not None:
            # A one-off job removes itself after firing.
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(f"parser-{parser_id}")

    def _drop_all(self) -> None:
        for parser_id in list(self._jobs):
            self._remove(parser_id)

    def _last_occurrences(self, parser_ids: list[int]) -> dict[int, datetime]:
        """The latest occurrence with a run or a skip record, per parser."""
        last: dict[int, datetime] = {}
        for model in (Run, ScheduleSkip):
            rows = db.session.execute(
                db.select(model.parser_id, sa.func.max(model.scheduled_for))
                .where(model.parser_id.in_(parser_ids), model.scheduled_for.is_not(None))
                .group_by(model.parser_id)
            )
            for pid, due in rows:
                if due is not None and due.tzinfo is None:
                    due = due.replace(tzinfo=dt_timezone.utc)  # SQLite's max() skips the type
                if due is not None and (pid not in last or due > last[pid]):
                    last[pid] = due
        return last

    def _schedule_maintenance(self, job: _Maintenance) -> None:
        def run() -> None:
            if not self.active:
                return
            try:
                job.func(self.app)
            except Exception:
                log.exception("maintenance job %s failed", job.name)

        self.scheduler.add_job(
            run,
            "interval",
            seconds=job.interval_s,
            id=f"maintenance-{job.name}",
            name=job.name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(dt_timezone.utc) + timedelta(seconds=1),
        )
