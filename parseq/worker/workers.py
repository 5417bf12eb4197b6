"""Worker processes announce themselves in the ``workers`` table, so health can list them.

Each process that consumes runs (``parseq worker``, ``parseq up``) upserts one row, keyed
``hostname:pid``, every ``worker_heartbeat_interval_s`` from a thread of its own, and deletes
it on a clean stop. A crashed worker's row stays, with an old heartbeat: health shows it dead
until ``worker_prune_after_s`` has passed, then no more, and the next heartbeat of any worker
deletes it.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Mapped, mapped_column

from parseq.db.models import UTCDateTime, _iso, db, utcnow

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
            "started_at": _iso(self.started_at),
            "last_heartbeat_at": _iso(self.last_heartbeat_at),
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


class Heartbeat(threading.Thread):
    """Beats for one worker process until stopped; then removes its row."""

    def __init__(self, app: Flask, worker_id: str, queue: str, threads: int) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.app = app
        self.worker_id = worker_id
        self.queue = queue
        self.threads = threads
        self.interval_s = app.extensions["parseq"].config.worker_heartbeat_interval_s
        self.prune_after_s = app.extensions["parseq"].config.worker_prune_after_s
        self.started_at = utcnow()
        self._stopped = threading.Event()

    def start(self) -> None:
        """Beat once before returning, so the worker is listed as soon as it consumes."""
        with self.app.app_context():
            self._beat()
        super().start()

    def _beat(self) -> None:
        try:
            beat(self.worker_id, self.queue, self.threads, self.started_at)
            prune(self.prune_after_s)
        except Exception:  # the database may blip (or have no tables yet); go on
            log.warning("worker heartbeat failed", exc_info=True)
            db.session.rollback()

    def run(self) -> None:
        with self.app.app_context():
            while not self._stopped.wait(self.interval_s):
                self._beat()
            try:
                db.session.execute(db.delete(Worker).where(Worker.id == self.worker_id))
                db.session.commit()
            except Exception:
                log.warning("could not remove worker %s", self.worker_id, exc_info=True)
                db.session.rollback()
            finally:
                db.session.remove()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)
