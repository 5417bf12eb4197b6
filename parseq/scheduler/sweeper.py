"""The sweeper: re-sends pending runs whose message never reached the broker.

``runs`` records ``enqueued_at`` when the broker accepts a run's message (a run created by the
API or the admin within a fraction of a second, in a batch). A run left ``pending`` without it
(the broker was down, or the mark was lost with its process) is sent again once the broker is
back, so a broker outage delays runs and never loses them. A run that got sent twice still
executes once: a worker claims it atomically (``execution.claim``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import Flask

from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.services import runs

log = logging.getLogger(__name__)

BATCH = 500


def sweep_pending(app: Flask, older_than_s: float | None = None, resend_all: bool = False) -> int:
    """Re-send pending runs queued more than ``older_than_s`` seconds ago (default
    ``sweep_pending_after_s``) that the broker never took; return how many were sent.

    ``resend_all`` also re-sends runs the broker did take: for an in-memory broker, whose queue
    is empty after a restart.
    """
    config = app.extensions["parseq"].config
    age_s = config.sweep_pending_after_s if older_than_s is None else older_than_s
    with app.app_context():
        query = (
            db.select(Run)
            .where(
                Run.status == RunStatus.PENDING,
                Run.queued_at <= utcnow() - timedelta(seconds=age_s),
            )
            .order_by(Run.id)
            .limit(BATCH)
        )
        if not resend_all:
            query = query.where(Run.enqueued_at.is_(None))
        # Stops at the first failure: the broker is still down; the next sweep tries again.
        sent = runs.enqueue_runs(db.session.execute(query).scalars().all())
        if sent:
            log.info("sweeper re-sent %d pending run(s)", sent)
        return sent
