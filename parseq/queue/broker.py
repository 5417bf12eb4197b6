"""Sending messages: a broker picked by URL scheme, and the two messages Parseq sends (a run to
execute, a notification to handle). No actor code: the actors live in :mod:`parseq.worker.actors`,
declared only by processes that consume, so any process can send by the actors' names.

Each app gets its own broker (no global broker), so tests and the embedded mode can hold several
apps in one process.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import dramatiq
from dramatiq.brokers.stub import StubBroker
from flask import Flask, current_app

from parseq.core.config import Config
from parseq.core.errors import BrokerError, ConfigError
from parseq.core.outage_log import OutageLog
from parseq.core.pools import ForkSafeThreadPool

if TYPE_CHECKING:
    from dramatiq import Broker

log = logging.getLogger(__name__)

ACTOR_NAME = "execute_run"
NOTIFY_ACTOR_NAME = "notify"


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


def init_broker(config: Config) -> Broker:
    """The app's broker, with its two queues declared so that any process can send to them."""
    broker = make_broker(config)
    broker.declare_queue(config.queue_name)
    broker.declare_queue(notify_queue(config))
    return broker


def notify_queue(config: Config) -> str:
    """Notifications have a queue of their own: they never wait behind runs."""
    return f"{config.queue_name}-notify"


class BrokerThread(ForkSafeThreadPool):
    """Runs the app's broker calls on one long-lived thread of this process.

    Dramatiq's RabbitMQ broker opens a connection per calling thread and keeps it until the
    broker closes: called from a thread-per-request web server, every request would open one
    (a TCP and AMQP handshake) and leak it. Here all calls share one connection, which also keeps a
    connection's publisher confirms in order. Created per process, so a fork (gunicorn) gets
    its own thread.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1, name="parseq-broker")
        #: Sends that fail while the broker is down are logged by its state changes.
        self.outage = OutageLog("the broker", log)


def _message(queue_name: str, actor_name: str, *args: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={}
    )


def send_run(run_id: int, delay_s: float = 0.0) -> None:
    """Enqueue a run for the workers, held back ``delay_s`` seconds by the broker; raise
    :class:`BrokerError` when the broker is down (logged once per outage, not per call)."""
    state = current_app.extensions["parseq"]
    message = _message(state.config.queue_name, ACTOR_NAME, run_id)
    # Dramatiq takes the delay in ms.
    delay_ms = int(delay_s * 1000) if delay_s > 0 else None
    try:
        state.broker_thread.call(state.broker.enqueue, message, delay=delay_ms)
    except Exception as exc:
        state.broker_thread.outage.failed(
            exc, "runs stay pending and the sweeper sends them when it is back"
        )
        raise BrokerError(f"could not enqueue run {run_id}: {exc}", run_id=run_id) from exc
    state.broker_thread.outage.succeeded()


def send_notification(
    app: Flask, kind: str, ident: int, delay_s: float = 0.0, wait: bool = True
) -> Any:
    """Send a ``notify`` message (``kind`` run, delivery or digest) through the app's broker
    thread; with ``wait`` False, return its future at once."""
    state = app.extensions["parseq"]
    message = _message(notify_queue(state.config), NOTIFY_ACTOR_NAME, kind, ident)
    delay_ms = int(delay_s * 1000) if delay_s > 0 else None
    future = state.broker_thread.submit(state.broker.enqueue, message, delay=delay_ms)
    return future.result() if wait else future
