"""The worker process's heartbeat: a thread that keeps this process's row in the ``workers``
table fresh (:mod:`parseq.db.workers`), and removes it on a clean stop. Not the heartbeat of a
run, which the run's watchdog writes (:mod:`parseq.worker.watchdog`)."""

from __future__ import annotations

import logging
import threading

from flask import Flask

from parseq.db.base import db, utcnow
from parseq.db.workers import Worker, beat, prune

log = logging.getLogger(__name__)


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
