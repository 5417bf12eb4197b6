"""Prometheus metrics at ``/metrics``, computed from the database.

Counters and histograms live in the ``metric_counters`` table: whichever process counts an
event (a worker on another machine, one of several gunicorn workers) adds to the same row, and
any web process serves the same totals; no multiprocess directory to share. A run is counted
once, by the notification message of its end (:func:`take_run_end`). Gauges are counted at
scrape time on indexed columns, so a scrape costs the same over a million runs.

Access: with ``PARSEQ_METRICS_TOKEN`` set, a ``Authorization: Bearer <token>`` header;
otherwise a client address inside ``PARSEQ_METRICS_NETWORKS`` (loopback by default).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, has_app_context, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.db.notify_models import MetricCounter, RunEnd
from parseq.db.workers import ALIVE_INTERVALS, Worker

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

#: Bucket bounds of the duration histograms, in seconds.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, math.inf)
BUILD_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, math.inf)
LATENESS_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, math.inf)
#: Counters and the labels they carry, as the exposition names them (with ``_total``).
COUNTERS = {
    "runs": ("Runs ended, by parser, final status and trigger.", ("parser", "status", "trigger")),
    "env_builds": ("Parser environment builds, by result (ok, failed).", ("result",)),
    "notifications": ("Notification deliveries, by channel and result.", ("channel", "result")),
}
HISTOGRAMS = {
    "run_duration_seconds": ("Duration of ended runs.", ("parser",)),
    "env_build_duration_seconds": ("Duration of environment builds.", ()),
    "schedule_lateness_seconds": ("Start of scheduled runs after their due time.", ()),
}


# --- counting ---------------------------------------------------------------------------------


def _key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True)


def _upsert(dialect: str) -> Any:
    """Add ``value`` to a counter, creating it at need (PostgreSQL and SQLite: ON CONFLICT)."""
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(MetricCounter.__table__)
    return insert.on_conflict_do_update(
        index_elements=["metric", "labels"],
        set_={"value": MetricCounter.__table__.c.value + insert.excluded.value},
    )


def _params(rows: list[tuple[str, dict[str, str], float]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], float] = defaultdict(float)
    for metric, labels, value in rows:
        merged[(metric, _key(labels))] += value
    # Sorted, so two processes adding at once lock the rows in one order (no deadlock).
    return [{"metric": m, "labels": k, "value": v} for (m, k), v in sorted(merged.items())]


def _add(rows: list[tuple[str, dict[str, str], float]]) -> None:
    """Add to counters in the session's transaction."""
    db.session.execute(_upsert(db.session.get_bind().dialect.name), _params(rows))


def _observe(
    name: str, labels: dict[str, str], value: float, buckets: tuple[float, ...]
) -> list[tuple[str, dict[str, str], float]]:
    rows = [(f"{name}_sum", labels, value), (f"{name}_count", labels, 1.0)]
    for bound in buckets:
        if value <= bound:
            rows.append((f"{name}_bucket", {**labels, "le": _le(bound)}, 1.0))
    return rows


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def take_run_end(run_id: int) -> bool:
    """Mark the run's end as handled, in the session's transaction; False if it was."""
    dialect = db.session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(RunEnd.__table__).values(run_id=run_id, handled_at=utcnow())
    try:
        result = db.session.execute(stmt.on_conflict_do_nothing())
    except sa.exc.IntegrityError:  # the run was deleted meanwhile
        db.session.rollback()
        return False
    return result.rowcount == 1


def count_run(run: Run) -> None:
    """Count an ended run (in the session's transaction)."""
    parser = run.parser.name
    rows = [
        ("runs", {"parser": parser, "status": run.status.value, "trigger": run.trigger.value}, 1.0)
    ]
    if run.started_at is not None and run.finished_at is not None:
        duration = (run.finished_at - run.started_at).total_seconds()
        rows += _observe("run_duration_seconds", {"parser": parser}, duration, DURATION_BUCKETS)
    if run.scheduled_for is not None and run.started_at is not None:
        late = max((run.started_at - run.scheduled_for).total_seconds(), 0.0)
        rows += _observe("schedule_lateness_seconds", {}, late, LATENESS_BUCKETS)
    _add(rows)


def count_notification(channel: str, result: str) -> None:
    _commit_quietly([("notifications", {"channel": channel, "result": result}, 1.0)])


def count_env_build(ok: bool, duration_s: float) -> None:
    """Count an environment build; outside an app (``parseq envs``) nothing is counted."""
    if not has_app_context():
        return
    rows = [("env_builds", {"result": "ok" if ok else "failed"}, 1.0)]
    rows += _observe("env_build_duration_seconds", {}, duration_s, BUILD_BUCKETS)
    _commit_quietly(rows)


def _commit_quietly(rows: list[tuple[str, dict[str, str], float]]) -> None:
    """Counting never fails what it counts: on a connection of its own, errors logged."""
    try:
        with db.engine.begin() as conn:
            conn.execute(_upsert(conn.dialect.name), _params(rows))
    except Exception:
        log.warning("could not count %s", [r[0] for r in rows], exc_info=True)


# --- the scrape -------------------------------------------------------------------------------


class DatabaseCollector:
    """Reads every metric from the database at each scrape."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        stored: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for metric, labels, value in db.session.execute(
            sa.select(MetricCounter.metric, MetricCounter.labels, MetricCounter.value)
        ):
            stored[metric].append((json.loads(labels), value))
        for name, (doc, names) in COUNTERS.items():
            family = CounterMetricFamily(f"parseq_{name}", doc, labels=list(names))
            for labels, value in stored.get(name, []):
                family.add_metric([labels.get(n, "") for n in names], value)
            yield family
        for name, (doc, names) in HISTOGRAMS.items():
            yield _histogram(name, doc, names, stored)
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        count = sa.func.count(Run.id)
        by_status = dict(
            db.session.execute(
                sa.select(Run.status, count)
                .where(Run.status.in_([RunStatus.PENDING, RunStatus.RUNNING]))
                .group_by(Run.status)
            ).all()
        )
        cutoff = utcnow() - timedelta(
            seconds=self.config.worker_heartbeat_interval_s * ALIVE_INTERVALS
        )
        alive = db.session.execute(
            sa.select(sa.func.count()).where(Worker.last_heartbeat_at >= cutoff)
        ).scalar_one()
        yield GaugeMetricFamily(
            "parseq_runs_running", "Runs running now.", by_status.get(RunStatus.RUNNING, 0)
        )
        yield GaugeMetricFamily(
            "parseq_queue_depth",
            "Runs pending (queued, waiting for a worker or a retry's backoff).",
            by_status.get(RunStatus.PENDING, 0),
        )
        yield GaugeMetricFamily("parseq_workers_alive", "Worker processes heartbeating.", alive)


def _histogram(
    name: str,
    doc: str,
    names: tuple[str, ...],
    stored: dict[str, list[tuple[dict[str, str], float]]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"parseq_{name}", doc, labels=list(names))
    series: dict[tuple[str, ...], dict[str, Any]] = defaultdict(lambda: {"buckets": {}, "sum": 0.0})
    for labels, value in stored.get(f"{name}_bucket", []):
        key = tuple(labels.get(n, "") for n in names)
        series[key]["buckets"][labels["le"]] = value
    for labels, value in stored.get(f"{name}_sum", []):
        series[tuple(labels.get(n, "") for n in names)]["sum"] = value
    bounds = HISTOGRAM_BOUNDS[name]
    for key, data in sorted(series.items()):
        buckets = [(_le(b), data["buckets"].get(_le(b), 0.0)) for b in bounds]
        family.add_metric(list(key), buckets, data["sum"])
    return family


HISTOGRAM_BOUNDS = {
    "run_duration_seconds": DURATION_BUCKETS,
    "env_build_duration_seconds": BUILD_BUCKETS,
    "schedule_lateness_seconds": LATENESS_BUCKETS,
}


def render(config: Config) -> bytes:
    """The metrics in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(config))  # type: ignore[arg-type]
    try:
        return generate_latest(registry)
    finally:
        db.session.rollback()  # end the read transaction


def allowed(config: Config, authorization: str | None, remote_addr: str | None) -> bool:
    """The token when one is set, else the client's network."""
    if config.metrics_token:
        given = (authorization or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), config.metrics_token.encode())
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return False
    networks = [n.strip() for n in config.metrics_networks.split(",") if n.strip()]
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


@bp.get("/metrics")
def metrics_endpoint() -> Any:
    config: Config = current_app.extensions["parseq"].config
    if not allowed(config, request.headers.get("Authorization"), request.remote_addr):
        error = {
            "code": "forbidden",
            "message": "metrics need PARSEQ_METRICS_TOKEN or a client in PARSEQ_METRICS_NETWORKS",
        }
        return jsonify({"error": error}), 403
    return Response(render(config), content_type=CONTENT_TYPE_LATEST)
