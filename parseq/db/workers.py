"""The ``workers`` table: worker processes announce themselves, so health can list them.

Each process that consumes runs (``parseq worker``, ``parseq up``) upserts one row, keyed
``hostname:pid``, every ``worker_heartbeat_interval_s`` from a thread of its own
(:class:`parseq.worker.heartbeat.Heartbeat`), and deletes
it on a clean stop. A crashed worker's row stays, with an old heartbeat: health shows it dead
until ``worker_prune_after_s`` has passed, then no more, and the next heartbeat of any worker
deletes it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from parseq.db.base import UTCDateTime, db, iso, utcnow

log = logging.getLogger(__name__)

#: A worker counts as alive while its last heartbeat is younger than this many intervals.
ALIVE_INTERVALS = 3


class Worker(db.Model):
    """A worker process and when it was last seen."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    queue: Mapped[str] = mapped_column(sa.String(128))
    threads: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self, interval_s: float, now: datetime) -> dict[str, Any]:
        alive = now - self.last_heartbeat_at < timedelta(seconds=interval_s * ALIVE_INTERVALS)
        return {
            "id": self.id,
            "queue": self.queue,
            "threads": self.threads,
            "started_at": iso(self.started_at),
            "last_heartbeat_at": iso(self.last_heartbeat_at),
            "alive": alive,
        }


def beat(worker_id: str, queue: str, threads: int, started_at: datetime) -> None:
    """Insert or refresh this worker's row (update first: the common case, and portable)."""
    now = utcnow()
    result = db.session.execute(
        db.update(Worker)
        .where(Worker.id == worker_id)
        .values(last_heartbeat_at=now, queue=queue, threads=threads)
    )
    if result.rowcount == 0:
        db.session.add(
            Worker(
                id=worker_id,
                queue=queue,
                threads=threads,
                started_at=started_at,
                last_heartbeat_at=now,
            )
        )
    db.session.commit()


def stale_before(prune_after_s: float, now: datetime) -> datetime | None:
    """Rows last seen before this are pruned; None when pruning is off (0)."""
    return now - timedelta(seconds=prune_after_s) if prune_after_s > 0 else None


def prune(prune_after_s: float) -> int:
    """Delete the rows of workers unseen for more than ``prune_after_s``; return how many."""
    cutoff = stale_before(prune_after_s, utcnow())
    if cutoff is None:
        return 0
    result = db.session.execute(db.delete(Worker).where(Worker.last_heartbeat_at < cutoff))
    db.session.commit()
    if result.rowcount:
        log.info("pruned %d worker(s) unseen for %g s", result.rowcount, prune_after_s)
    return result.rowcount
