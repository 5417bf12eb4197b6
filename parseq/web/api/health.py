"""What ``GET /api/v1/health`` reports: dependencies, workers, queue depth and the host.

Each dependency check is timed; a failing one makes the whole answer 503 so a load balancer or
monitor can act on the status code alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import sqlalchemy as sa
from flask import Flask

from parseq.db.models import db, utcnow
from parseq.db.workers import Worker, stale_before

#: Seconds a broker probe may take before it counts as down.
BROKER_TIMEOUT_S = 3


def timed(probe: Callable[[], Any]) -> dict[str, Any]:
    """Run ``probe``; report ok/error and its latency in milliseconds."""
    started = time.perf_counter()
    try:
        value = probe()
        result: dict[str, Any] = {"ok": True}
        if isinstance(value, dict):
            result.update(value)
    except Exception as exc:
        result = {"ok": False, "error": str(exc) or type(exc).__name__}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def queue_depth(broker: Any, broker_url: str, queue: str) -> dict[str, Any]:
    """Messages waiting in the run queue; raises when the broker cannot be reached."""
    scheme = urlparse(broker_url).scheme
    if scheme in ("amqp", "amqps"):
        return {"queue_depth": _rabbitmq_depth(broker_url, queue)}
    if scheme in ("redis", "rediss"):
        broker.client.ping()
        return {"queue_depth": int(broker.client.llen(f"{broker.namespace}:{queue}"))}
    pending = broker.queues.get(queue)
    return {"queue_depth": pending.qsize() if pending is not None else 0}


def _rabbitmq_depth(url: str, queue: str) -> int:
    """A passive declare on a short-lived connection (the broker's own is per thread)."""
    import pika
    from pika.exceptions import ChannelClosedByBroker

    params = pika.URLParameters(url)
    params.socket_timeout = BROKER_TIMEOUT_S
    params.blocked_connection_timeout = BROKER_TIMEOUT_S
    params.connection_attempts = 1
    conn = pika.BlockingConnection(params)
    try:
        try:
            declared = conn.channel().queue_declare(queue=queue, passive=True)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == 404:  # no worker declared it yet: nothing is waiting
                return 0
            raise
        return int(declared.method.message_count)
    finally:
        conn.close()


def host_stats(disk_path: str) -> dict[str, Any]:
    import psutil

    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    return {
        "cpu_count": psutil.cpu_count(),
        "load_avg": [round(x, 2) for x in psutil.getloadavg()],
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_total_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "memory_percent": memory.percent,
        "disk_path": disk_path,
        "disk_total_bytes": disk.total,
        "disk_free_bytes": disk.free,
        "disk_percent": disk.percent,
    }


def report(app: Flask) -> tuple[dict[str, Any], int]:
    """The health document and its HTTP status (200, or 503 when a dependency is down)."""
    state = app.extensions["parseq"]
    config = state.config
    checks = {
        "database": timed(lambda: db.session.execute(sa.text("SELECT 1"))),
        "broker": timed(lambda: queue_depth(state.broker, config.broker_url, config.queue_name)),
        "storage": timed(state.storage.check),
    }
    if not checks["database"]["ok"]:
        db.session.rollback()
        workers: list[dict[str, Any]] = []
    else:
        now = utcnow()
        query = db.select(Worker).order_by(Worker.id)
        cutoff = stale_before(config.worker_prune_after_s, now)
        if cutoff is not None:  # killed workers no live one has pruned yet
            query = query.where(Worker.last_heartbeat_at >= cutoff)
        rows = db.session.execute(query).scalars()
        workers = [w.to_dict(config.worker_heartbeat_interval_s, now) for w in rows]
    ok = all(c["ok"] for c in checks.values())
    body = {
        "status": "ok" if ok else "down",
        "checks": checks,
        "queue": {"name": config.queue_name, "depth": checks["broker"].get("queue_depth")},
        "workers": workers,
        "workers_alive": sum(1 for w in workers if w["alive"]),
        "host": host_stats(str(config.var_dir)),
    }
    return body, 200 if ok else 503
