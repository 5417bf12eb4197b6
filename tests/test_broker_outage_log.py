"""A broker outage is logged by its state changes: once when sends start failing, a summary
while it lasts, once when it ends; not a traceback (and pika's errors) per failed send."""

from __future__ import annotations

import logging
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db
from parseq.scheduler.sweeper import sweep_pending
from parseq.web.app import create_app, init_db
from tests.conftest import TcpProxy, add_parser, api_client, delete_rabbit_queues

pytestmark = pytest.mark.services


class LowPortProxy(TcpProxy):
    """A :class:`TcpProxy` on a port below the ephemeral range. Hundreds of refused connects a
    second walk the ephemeral ports, and one landing on the proxy's own port connects to itself
    (TCP simultaneous open), so the proxy could not listen there again."""

    def __init__(self, target_port: int) -> None:
        self._low_port = _low_free_port()
        super().__init__(target_port)

    def open(self) -> None:
        self.port = self._low_port
        super().open()


def _low_free_port() -> int:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10000, ephemeral_low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture
def proxied_app(make_config: Callable[..., Config]) -> Iterator[tuple[Flask, TcpProxy]]:
    """The web side on SQLite, with RabbitMQ behind a proxy that can go down."""
    proxy = LowPortProxy(5672)
    queue = f"parseq_outage_log_{uuid.uuid4().hex[:8]}"
    config = make_config(
        broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F",
        queue_name=queue,
        log_level="INFO",
    )
    app = create_app(config)
    init_db(app)
    with app.app_context():
        yield app, proxy
        db.engine.dispose()
    proxy.close()
    delete_rabbit_queues(queue)


def test_a_broker_outage_is_logged_once_with_summaries_not_per_send(
    proxied_app: tuple[Flask, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    app, proxy = proxied_app
    app.extensions["parseq"].broker_thread.outage.summary_every_s = 1.0
    add_parser("echo", "echo_env.py")
    client = api_client(app)
    assert client.post("/api/v1/parsers/echo/runs").status_code == 202  # connected
    caplog.set_level(logging.INFO)
    caplog.clear()

    posted = 0
    with proxy.outage():
        down_until = time.monotonic() + 2.5
        while time.monotonic() < down_until:
            assert client.post("/api/v1/parsers/echo/runs").status_code == 202
            posted += 1
        assert sweep_pending(app, older_than_s=0) == 0  # the scheduler's sends fail quietly too
    assert client.post("/api/v1/parsers/echo/runs").status_code == 202

    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    messages = [r.getMessage() for r in records]
    assert posted >= 10
    assert not [r for r in records if r.exc_info or r.name.startswith("pika")], messages
    assert len(records) <= 5, messages
    assert "the broker is unreachable" in messages[0] and "stay pending" in messages[0]
    summaries = [m for m in messages if "still unreachable" in m]
    assert 1 <= len(summaries) <= 3, messages
    assert messages[-1].startswith("the broker is reachable again after")
    assert f"{posted + 1} attempt(s) failed" in messages[-1]  # every POST and the sweep
    db.session.expire_all()
    pending = db.session.execute(db.select(Run).where(Run.enqueued_at.is_(None))).scalars()
    assert {r.status for r in pending} == {RunStatus.PENDING}
