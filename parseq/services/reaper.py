"""The reaper: no run stays ``running`` after its worker died.

Workers heartbeat every run they execute (``watchdog.Watchdog``). A run whose heartbeat is older
than ``heartbeat_timeout_s`` lost its worker (SIGKILL, OOM killer, machine gone): the reaper
marks it ``error`` ("worker lost") and, when the parser allows retries, enqueues the next
attempt. It runs in the scheduler service and in ``parseq up``; several reapers at once are
safe, since each run is taken by one conditional UPDATE.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import Flask

from parseq.core.config import Config
from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.services import notify
from parseq.services.retries import schedule_retry

log = logging.getLogger(__name__)

WORKER_LOST = "worker lost"


def reap_once(app: Flask) -> int:
    """Finish every run whose heartbeat is stale; return how many were reaped."""
    config: Config = app.extensions["parseq"].config
    reaped = 0
    with app.app_context():
        cutoff = utcnow() - timedelta(seconds=config.heartbeat_timeout_s)
        stale = db.select(Run.id).where(Run.status == RunStatus.RUNNING, Run.heartbeat_at < cutoff)
        for run_id in list(db.session.execute(stale).scalars()):
            if _reap(run_id, cutoff, config):
                reaped += 1
    return reaped


def _reap(run_id: int, cutoff: datetime, config: Config) -> bool:
    run = db.session.get(Run, run_id)
    if run is None:
        return False
    message = (
        f"{WORKER_LOST}: no heartbeat from {run.worker_id or 'its worker'} "
        f"for {config.heartbeat_timeout_s:g} s"
    )
    # Only if still running and still stale: a heartbeat or a finish in between wins.
    result = db.session.execute(
        db.update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.RUNNING, Run.heartbeat_at < cutoff)
        .values(status=RunStatus.ERROR, error=message, finished_at=utcnow())
    )
    db.session.commit()
    if result.rowcount != 1:
        return False
    notify.run_ended(run_id)
    db.session.refresh(run)
    log.warning("run %s of %s: %s", run.id, run.parser.name, message)
    try:
        schedule_retry(run, config)
    except Exception:
        log.exception("could not schedule a retry of lost run %s", run.id)
        db.session.rollback()
    return True
