"""The broker side: every broker call of a process goes through one thread and connection."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from parseq.core.config import Config
from parseq.queue.broker import BrokerThread, send_run, warn_if_runs_outlast_consumer_timeout
from parseq.web.api.health import queue_depth
from parseq.web.app import create_app
from tests.conftest import delete_rabbit_queues


def test_broker_thread_runs_calls_on_one_thread_and_raises_their_errors() -> None:
    broker_thread = BrokerThread()
    names = {broker_thread.call(lambda: threading.current_thread().name) for _ in range(5)}
    assert len(names) == 1 and names.pop().startswith("parseq-broker")
    try:
        broker_thread.call(int, "not a number")
    except ValueError as exc:
        assert "not a number" in str(exc)
    else:
        raise AssertionError("the call's error was not raised in the caller")


def test_sends_from_many_short_lived_threads_share_one_rabbitmq_connection(
    services_env: dict[str, str],
) -> None:
    """A thread-per-request web server must not open (and leak) a connection per request."""
    queue = f"parseq_test_conn_{uuid.uuid4().hex[:8]}"
    app = create_app(Config.from_env(environ={**services_env, "PARSEQ_QUEUE_NAME": queue}))
    broker = app.extensions["parseq"].broker
    errors: list[BaseException] = []

    def request(run_id: int) -> None:
        with app.app_context():
            try:
                send_run(run_id)
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)

    try:
        for batch in range(4):
            threads = [threading.Thread(target=request, args=(batch * 10 + i,)) for i in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert errors == []
        assert len(broker.connections) == 1
        assert queue_depth(broker, services_env["PARSEQ_BROKER_URL"], queue) == {"queue_depth": 40}
    finally:
        broker.close()
        delete_rabbit_queues(queue)


def test_worker_warns_when_runs_may_outlast_rabbitmqs_consumer_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    amqp = "amqp://guest:guest@127.0.0.1:5672/%2F"
    with caplog.at_level(logging.WARNING, logger="parseq.queue.broker"):
        warn_if_runs_outlast_consumer_timeout(Config(broker_url=amqp, default_timeout_s=3600))
    assert len(caplog.records) == 1
    assert "consumer_timeout" in caplog.text and "README" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="parseq.queue.broker"):
        warn_if_runs_outlast_consumer_timeout(Config(broker_url=amqp, default_timeout_s=1800))
        warn_if_runs_outlast_consumer_timeout(
            Config(broker_url="redis://127.0.0.1:6379/0", default_timeout_s=3600)
        )
        # A broker whose consumer_timeout was raised (docker-compose's) and said so.
        warn_if_runs_outlast_consumer_timeout(
            Config(broker_url=amqp, default_timeout_s=3600, broker_consumer_timeout_s=90000)
        )
    assert caplog.records == []
