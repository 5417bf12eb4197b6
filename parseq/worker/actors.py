"""The consuming side of the queue: Parseq's two actors, and the workers that run them.

The actors are thin: each enters the app context and delegates, to
:func:`parseq.worker.execution.execute_run` (idempotent) or :func:`parseq.services.notify.handle`.
They are declared by :func:`start_worker` only, in the processes that consume; every process
sends by the actors' names (:mod:`parseq.queue.broker`).
"""

from __future__ import annotations

import logging
import threading

import dramatiq
from dramatiq import Broker
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import db
from parseq.queue.broker import ACTOR_NAME, NOTIFY_ACTOR_NAME, notify_queue
from parseq.services.notify import handle as notify_handle
from parseq.worker import uploads
from parseq.worker.execution import WORKER_ID
from parseq.worker.execution import execute_run as run_it
from parseq.worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)

# Parseq enforces run timeouts itself by killing the process group; Dramatiq's time limit
# cannot interrupt a wait on a child process, so it is set out of the way (7 days, in ms).
ACTOR_TIME_LIMIT_MS = 7 * 24 * 3600 * 1000


def declare_actors(app: Flask, broker: Broker, config: Config) -> None:
    """Declare the ``execute_run`` and ``notify`` actors on the app's broker (once), and the
    middleware that retries uploads while a worker is up."""
    if ACTOR_NAME in broker.get_declared_actors():
        return
    broker.add_middleware(Housekeeping(app))

    def execute_run(run_id: int) -> None:
        with app.app_context():
            run_it(run_id)

    dramatiq.actor(
        execute_run,
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=config.queue_name,
        max_retries=0,  # retries are Parseq's own (per parser), not Dramatiq's
        time_limit=ACTOR_TIME_LIMIT_MS,
    )

    def notify(kind: str, ident: int) -> None:
        with app.app_context():
            notify_handle(kind, ident)

    dramatiq.actor(
        notify,
        broker=broker,
        actor_name=NOTIFY_ACTOR_NAME,
        queue_name=notify_queue(config),
        max_retries=0,  # deliveries retry themselves (PARSEQ_NOTIFY_ATTEMPTS)
        time_limit=10 * 60 * 1000,
    )


class ParseqWorker(dramatiq.Worker):
    """A Dramatiq worker that also records its heartbeat in the ``workers`` table, with a
    worker of one thread for the notification queue beside it."""

    heartbeat: Heartbeat | None = None
    notifier: dramatiq.Worker | None = None

    def stop(self, timeout: int = 600000) -> None:
        if self.notifier is not None:
            self.notifier.stop(timeout)
        super().stop(timeout)
        if self.heartbeat is not None:
            self.heartbeat.stop()


def start_worker(app: Flask, threads: int | None = None) -> dramatiq.Worker:
    """Start worker threads in this process consuming the app's queue; call ``.stop()`` after."""
    state = app.extensions["parseq"]
    declare_actors(app, state.broker, state.config)
    threads = threads or state.config.worker_threads
    # Prefetch no more than the threads can run, so idle workers elsewhere get the rest.
    worker = ParseqWorker(
        state.broker,
        queues={state.config.queue_name},
        worker_threads=threads,
        worker_timeout=100,
    )
    worker.queue_prefetch = threads
    worker.start()
    worker.notifier = _start_notification_worker(state.broker, notify_queue(state.config))
    worker.heartbeat = Heartbeat(app, WORKER_ID, state.config.queue_name, threads)
    worker.heartbeat.start()
    log.info("worker started: %d threads on queue %s", threads, state.config.queue_name)
    return worker


def _start_notification_worker(broker: Broker, queue: str) -> dramatiq.Worker:
    """One thread on the notification queue, beside the run threads. Dramatiq warns that a
    second worker on a broker adds a second worker middleware: each worker has its own (it
    adds consumers for the worker's own queues only), as intended here, so that warning is
    kept out of the logs."""
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=1, worker_timeout=100)
    broker_log = logging.getLogger(f"dramatiq.broker.{type(broker).__name__}")
    level = broker_log.level
    broker_log.setLevel(logging.ERROR)
    try:
        worker.start()
    finally:
        broker_log.setLevel(level)
    return worker


class Housekeeping(dramatiq.Middleware):
    """While a worker is up, every ``retry_interval_s``: retry the uploads of runs waiting for
    storage (their files are on this machine, so only its workers can)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # the notification worker of the same process
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = self.app.extensions["parseq"].config.retry_interval_s
        with self.app.app_context():
            while not self._stop.wait(interval):
                try:
                    uploads.retry_pending(self.app)
                except Exception:  # the database may be down too: next pass
                    log.exception("retrying pending uploads failed")
                    db.session.rollback()
