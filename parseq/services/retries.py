"""Retrying failed runs: whether to, how long to wait, and the new attempt.

Each attempt is a run of its own (``attempt`` = previous + 1, ``retry_of`` = the failed run), so
every attempt keeps its own log, files and error. The wait is exponential backoff with jitter,
held by the broker (a delayed message) and recorded as the run's ``not_before``.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from parseq.core.config import Config
from parseq.core.errors import BrokerError
from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.queue.broker import send_run

log = logging.getLogger(__name__)


def should_retry(
    status: RunStatus, attempt: int, max_retries: int, retry_on_timeout: bool = False
) -> bool:
    """Errors retry while attempts are left; timeouts only when the parser asks for it;
    completed and cancelled runs never."""
    if attempt > max_retries:
        return False
    if status is RunStatus.ERROR:
        return True
    return status is RunStatus.TIMEOUT and retry_on_timeout


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retrying a failed ``attempt`` (1 = the first try).

    ``base * 2**(attempt-1)`` capped at ``max``, then "equal jitter": half of it fixed, half
    random, so runs that failed together (a site outage) do not all come back at once.
    """
    ceiling = min(max_s, base_s * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def schedule_retry(run: Run, config: Config, retryable: bool = True) -> Run | None:
    """If the finished ``run`` deserves another attempt, create and enqueue it (delayed by the
    backoff) and return it. The caller has committed the run's final status."""
    if not retryable or run.status in (RunStatus.COMPLETED, RunStatus.CANCELLED):
        return None
    parser = run.parser
    if not should_retry(run.status, run.attempt, parser.max_retries or 0, parser.retry_on_timeout):
        return None
    delay_s = backoff_s(run.attempt, config.retry_backoff_base_s, config.retry_backoff_max_s)
    retry = Run(
        parser=parser,
        args=dict(run.args or {}),
        positional=list(run.positional or []),
        trigger=run.trigger,
        attempt=run.attempt + 1,
        retry_of_id=run.id,
        code_version=run.code_version,  # the code that failed, tried again
        not_before=utcnow() + timedelta(seconds=delay_s),
        status=RunStatus.PENDING,
    )
    db.session.add(retry)
    db.session.commit()
    log.info(
        "run %s (%s) will be retried as run %s in %.1f s (attempt %d of %d)",
        run.id,
        run.status.value,
        retry.id,
        delay_s,
        retry.attempt,
        (parser.max_retries or 0) + 1,
    )
    try:
        send_run(retry.id, delay_s=delay_s)
    except BrokerError:  # logged by send_run once per outage; the sweeper sends it later
        log.debug("retry run %s could not be enqueued; it stays pending", retry.id)
    return retry
