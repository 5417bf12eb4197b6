"""The admin's front page: runs by status over 24 h, an hourly chart, recent failures, parsers
due next, busy workers and queue depth.

The chart is SVG built on the server, so the page needs no JavaScript library and no CDN.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from flask_admin import AdminIndexView, expose
from markupsafe import Markup

from parseq.db.models import Parser, Run, RunStatus, db, utcnow
from parseq.services import schedules
from parseq.web.admin.auth import LoginRequired

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=24)
#: A worker counts as alive while one of its runs heartbeated this recently.
ALIVE_WITHIN = timedelta(seconds=30)
MAX_CHART_RUNS = 20_000
# Bootstrap 4's colours, matching the status badges.
STATUS_HEX = {
    RunStatus.COMPLETED: "#28a745",
    RunStatus.ERROR: "#dc3545",
    RunStatus.TIMEOUT: "#ffc107",
    RunStatus.CANCELLED: "#343a40",
    RunStatus.RUNNING: "#007bff",
    RunStatus.PENDING: "#6c757d",
}


@dataclass(frozen=True)
class Summary:
    counts: dict[RunStatus, int]
    chart: Markup
    failures: list[Run]
    due: list[tuple[datetime, Parser]] | None  # None: this install has no schedules
    workers: list[str]
    queue_depth: int | None


def hourly_buckets(
    rows: list[tuple[datetime, RunStatus]], now: datetime, hours: int = 24
) -> list[Counter[RunStatus]]:
    """Runs per hour (oldest first) and status, for the last ``hours`` hours before ``now``."""
    buckets: list[Counter[RunStatus]] = [Counter() for _ in range(hours)]
    for queued_at, status in rows:
        age_h = int((now - queued_at).total_seconds() // 3600)
        if 0 <= age_h < hours:
            buckets[hours - 1 - age_h][status] += 1
    return buckets


def svg_chart(
    buckets: list[Counter[RunStatus]], now: datetime, width: int = 720, height: int = 160
) -> Markup:
    """A stacked bar chart of runs per hour, coloured by status."""
    pad_left, pad_bottom, pad_top = 30, 20, 10
    plot_h = height - pad_bottom - pad_top
    peak = max((sum(b.values()) for b in buckets), default=0) or 1
    bar_w = (width - pad_left) / len(buckets)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="parseq-chart" width="100%" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="runs per hour, last 24 hours">',
        f'<text x="0" y="{pad_top + 8}" font-size="10" fill="#666">{peak}</text>',
        f'<text x="0" y="{pad_top + plot_h}" font-size="10" fill="#666">0</text>',
        f'<line x1="{pad_left}" y1="{pad_top + plot_h}" x2="{width}" y2="{pad_top + plot_h}" '
        'stroke="#ccc"/>',
    ]
    start = now - timedelta(hours=len(buckets) - 1)
    for i, bucket in enumerate(buckets):
        x = pad_left + i * bar_w
        y = pad_top + plot_h
        hour = (start + timedelta(hours=i)).strftime("%H:00")
        for status in STATUS_HEX:
            count = bucket.get(status, 0)
            if not count:
                continue
            h = plot_h * count / peak
            y -= h
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                f'fill="{STATUS_HEX[status]}"><title>{hour} UTC: {count} '
                f"{status.value}</title></rect>"
            )
        if i % 6 == 0:
            parts.append(
                f'<text x="{x + 1:.1f}" y="{height - 5}" font-size="10" fill="#666">{hour}</text>'
            )
    parts.append("</svg>")
    # Every part is built from numbers and escaped labels above.
    return Markup("".join(parts))  # nosec B704


def queue_depth() -> int | None:
    """Messages waiting in the run queue, where the broker can tell; None otherwise."""
    state = current_app.extensions["parseq"]
    broker, name = state.broker, state.config.queue_name
    try:
        if hasattr(broker, "get_queue_message_counts"):  # RabbitMQ, on its connection's thread
            return int(state.broker_thread.call(broker.get_queue_message_counts, name)[0])
        queues = getattr(broker, "queues", None)
        if isinstance(queues, dict) and hasattr(queues.get(name), "qsize"):  # in-memory
            return int(queues[name].qsize())
    except Exception:  # a dashboard must render even when the broker is down
        log.warning("queue depth of %s unavailable", name, exc_info=True)
    return None


def parsers_due(limit: int = 10) -> list[tuple[datetime, Parser]]:
    """Enabled scheduled parsers and their next run time, soonest first."""
    scheduled = db.session.execute(
        db.select(Parser).where(Parser.enabled.is_(True), Parser.schedule_type.is_not(None))
    ).scalars()
    due = [(schedules.next_run_at(p), p) for p in scheduled]
    due = [item for item in due if item[0] is not None]
    due.sort(key=lambda item: item[0])
    return due[:limit]


def summary() -> Summary:
    now = utcnow()
    since = now - WINDOW
    counts = dict(
        db.session.execute(
            db.select(Run.status, db.func.count())
            .where(Run.queued_at >= since)
            .group_by(Run.status)
        ).all()
    )
    rows = db.session.execute(
        db.select(Run.queued_at, Run.status).where(Run.queued_at >= since).limit(MAX_CHART_RUNS)
    ).all()
    failures = db.session.execute(
        db.select(Run)
        .where(Run.status.in_((RunStatus.ERROR, RunStatus.TIMEOUT)))
        .order_by(Run.id.desc())
        .limit(10)
    ).scalars()
    workers = db.session.execute(
        db.select(Run.worker_id)
        .where(Run.status == RunStatus.RUNNING, Run.heartbeat_at >= now - ALIVE_WITHIN)
        .distinct()
    ).scalars()
    return Summary(
        counts={s: counts.get(s, 0) for s in RunStatus},
        chart=svg_chart(hourly_buckets([tuple(r) for r in rows], now), now),
        failures=list(failures),
        due=parsers_due(),
        workers=sorted(w for w in workers if w),
        queue_depth=queue_depth(),
    )


class DashboardView(LoginRequired, AdminIndexView):
    """``/admin/``: the dashboard."""

    @expose("/")
    def index(self) -> Any:
        return self.render("parseq/dashboard.html", s=summary())
