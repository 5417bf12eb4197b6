"""The Dramatiq side: a broker picked by URL scheme, the ``execute_run`` actor, and workers.

Each app gets its own broker and actor (no global broker), so tests and the embedded mode can
hold several apps in one process. The actor is thin: it enters the app context and delegates to
:func:`parseq.execution.execute_run`, which is idempotent.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import dramatiq
from dramatiq.brokers.stub import StubBroker
from flask import Flask, current_app

from parseq.config import Config
from parseq.errors import BrokerError, ConfigError
from parseq.notify import handle as notify_handle
from parseq.outage_log import OutageLog
from parseq.pools import ProcessPool

if TYPE_CHECKING:
    from dramatiq import Actor, Broker

    from parseq.workers import Heartbeat

log = logging.getLogger(__name__)

ACTOR_NAME = "execute_run"
NOTIFY_ACTOR_NAME = "notify"
# Parseq enforces run timeouts itself by killing the process group; Dramatiq's time limit
# cannot interrupt a wait on a child process, so it is set out of the way (7 days, in ms).
ACTOR_TIME_LIMIT_MS = 7 * 24 * 3600 * 1000


def make_broker(config: Config) -> Broker:
    """``memory://`` -> in-process StubBroker, ``amqp://`` -> RabbitMQ, ``redis://`` -> Redis."""
    scheme = urlparse(config.broker_url).scheme
    if scheme == "memory":
        broker = StubBroker()
        broker.emit_after("process_boot")
        return broker
    if scheme in ("amqp", "amqps"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=config.broker_url, confirm_delivery=True)
    if scheme in ("redis", "rediss"):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=config.broker_url)
    raise ConfigError(
        f"PARSEQ_BROKER_URL scheme {scheme!r} is not supported (use memory://, amqp:// or redis://)"
    )


def warn_if_runs_outlast_consumer_timeout(config: Config) -> None:
    """Log a warning when the default run timeout exceeds the broker's ``consumer_timeout``
    (``PARSEQ_BROKER_CONSUMER_TIMEOUT_S``): RabbitMQ would close the channel of a worker
    executing a longer run (its message is unacknowledged until the run ends) and redeliver it."""
    scheme = urlparse(config.broker_url).scheme
    if scheme in ("amqp", "amqps") and config.default_timeout_s > config.broker_consumer_timeout_s:
        log.warning(
            "PARSEQ_DEFAULT_TIMEOUT_S is %g s, above the broker's consumer_timeout (%g s, "
            "PARSEQ_BROKER_CONSUMER_TIMEOUT_S): raise RabbitMQ's consumer_timeout above the "
            "longest run timeout and say so here (see README, Deployment)",
            config.default_timeout_s,
            config.broker_consumer_timeout_s,
        )


def init_broker(app: Flask, config: Config) -> tuple[Broker, Actor]:
    """Create the app's broker and declare the ``execute_run`` actor on it."""
    broker = make_broker(config)
    broker.add_middleware(Housekeeping(app))

    def execute_run(run_id: int) -> None:
        from parseq.execution import execute_run as run_it

        with app.app_context():
            run_it(run_id, requeue=True)

    actor = dramatiq.actor(
        execute_run,
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=config.queue_name,
        max_retries=0,  # retries are Parseq's own (per parser), not Dramatiq's
        time_limit=ACTOR_TIME_LIMIT_MS,
    )
    app.extensions["parseq.notify"] = _notify_actor(app, broker, config)
    return broker, actor


def notify_queue(config: Config) -> str:
    """Notifications have a queue of their own: they never wait behind runs."""
    return f"{config.queue_name}-notify"


def _notify_actor(app: Flask, broker: Broker, config: Config) -> Actor:
    """The actor of run ends, notification deliveries and digests (``parseq.notify``)."""

    def notify(kind: str, ident: int) -> None:
        with app.app_context():
            notify_handle(kind, ident)

    return dramatiq.actor(
        notify,
        broker=broker,
        actor_name=NOTIFY_ACTOR_NAME,
        queue_name=notify_queue(config),
        max_retries=0,  # deliveries retry themselves (PARSEQ_NOTIFY_ATTEMPTS)
        time_limit=10 * 60 * 1000,
    )


class BrokerThread(ProcessPool):
    """Runs the app's broker calls on one long-lived thread of this process.

    Dramatiq's RabbitMQ broker opens a connection per calling thread and keeps it until the
    broker closes: called from a thread-per-request web server, every request would open one
    (about 6 ms) and leak it. Here all calls share one connection, which also keeps a
    connection's publisher confirms in order. Created per process, so a fork (gunicorn) gets
    its own thread.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1, name="parseq-broker")
        #: Sends that fail while the broker is down are logged by its state changes.
        self.outage = OutageLog("the broker", log)


def send_run(run_id: int, delay_s: float = 0.0) -> None:
    """Enqueue a run for the workers, held back ``delay_s`` seconds by the broker; raise
    :class:`BrokerError` when the broker is down (logged once per outage, not per call)."""
    state = current_app.extensions["parseq"]
    try:
        if delay_s > 0:
            # Dramatiq takes the delay in ms.
            state.broker_thread.call(
                state.actor.send_with_options, args=(run_id,), delay=int(delay_s * 1000)
            )
        else:
            state.broker_thread.call(state.actor.send, run_id)
    except Exception as exc:
        state.broker_thread.outage.failed(
            exc, "runs stay pending and the sweeper sends them when it is back"
        )
        raise BrokerError(f"could not enqueue run {run_id}: {exc}", run_id=run_id) from exc
    state.broker_thread.outage.succeeded()


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
    from parseq.execution import WORKER_ID
    from parseq.workers import Heartbeat

    state = app.extensions["parseq"]
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
        from parseq import uploads
        from parseq.models import db

        interval = self.app.extensions["parseq"].config.retry_interval_s
        with self.app.app_context():
            while not self._stop.wait(interval):
                try:
                    uploads.retry_pending(self.app)
                except Exception:  # the database may be down too: next pass
                    log.exception("retrying pending uploads failed")
                    db.session.rollback()
