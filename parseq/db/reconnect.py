"""Database work that survives a database restart: retry on a lost connection.

The engine's ``pool_pre_ping`` replaces dead pooled connections at checkout, but a statement
already running when the server goes away fails, and so does every new connection until it is
back. :func:`retry_db` rolls the session back and runs the whole unit of work again, with
exponential backoff, for up to ``deadline_s``: a worker finishing a run during a restart
records it once the database answers, instead of dropping it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from parseq.db.models import db

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` means the database connection was lost or refused (not a bad query)."""
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, (sa.exc.OperationalError, sa.exc.InterfaceError)
        )
    return False


def retry_db(fn: Callable[[], T], deadline_s: float, what: str = "database work") -> T:
    """``fn()``, run again after a rollback while the database is unreachable, for up to
    ``deadline_s`` seconds; the last error is raised after that. ``fn`` must be a whole
    transaction (it commits), so running it twice is safe."""
    give_up = time.monotonic() + deadline_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return fn()
        except sa.exc.DBAPIError as exc:
            if not is_disconnect(exc) or time.monotonic() + delay > give_up:
                raise
            log.warning("database unreachable during %s; retrying in %.1f s: %s", what, delay, exc)
        with contextlib.suppress(Exception):
            db.session.rollback()
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)
