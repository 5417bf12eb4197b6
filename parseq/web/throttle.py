"""Brute-force limits: failed admin logins per username and per client address, and failed API
tokens per address.

After ``PARSEQ_LOGIN_MAX_FAILURES`` failures within ``PARSEQ_LOGIN_FAILURE_WINDOW_S`` (a moving
window), a key is refused until its oldest failure leaves the window. Only failures count, so
a user who types the right password is never slowed by their own successes. Counters live in
``PARSEQ_THROTTLE_STORAGE_URL``: ``memory://`` (this process only: the embedded default) or
``redis://`` (shared by every web process: use it in production). Built on ``limits``, the
library under Flask-Limiter: Flask-Limiter limits requests to routes, while here only failed
attempts count, checked before the password or token is.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from flask import Flask, current_app
from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from parseq.core.config import Config
from parseq.core.errors import TooManyRequests

log = logging.getLogger(__name__)


class Throttle:
    """Counts failures per key and refuses keys that failed too often."""

    def __init__(self, config: Config) -> None:
        self._limiter = MovingWindowRateLimiter(storage_from_string(config.throttle_storage_url))
        self._item = RateLimitItemPerSecond(
            config.login_max_failures, max(1, round(config.login_failure_window_s))
        )

    def check(self, *keys: str) -> None:
        """Raise :class:`TooManyRequests` while any of ``keys`` has used up its failures."""
        wait_s = 0.0
        for key in keys:
            try:
                if self._limiter.test(self._item, key):
                    continue
                reset = self._limiter.get_window_stats(self._item, key).reset_time
            except Exception:  # a storage outage must not lock everyone out: log, let it pass
                log.warning("throttle storage unavailable; not limiting %s", key, exc_info=True)
                continue
            wait_s = max(wait_s, reset - time.time())
        if wait_s > 0:
            minutes = max(1, math.ceil(wait_s / 60))
            plural = "s" if minutes > 1 else ""
            raise TooManyRequests(
                f"Too many failed attempts; try again in {minutes} minute{plural}.",
                retry_after_s=math.ceil(wait_s),
            )

    def fail(self, *keys: str) -> None:
        """Count one failure against each of ``keys``."""
        for key in keys:
            try:
                self._limiter.hit(self._item, key)
            except Exception:  # as in check: the storage being down is logged, not fatal
                log.warning("throttle storage unavailable; failure of %s not counted", key)


def key(kind: str, value: str) -> str:
    """A storage key: the value hashed, so any submitted username fits and none is stored."""
    return f"parseq:{kind}:{hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]}"


def init_app(app: Flask) -> None:
    """Give the app its throttle (``app.extensions["parseq_throttle"]``), once."""
    if "parseq_throttle" not in app.extensions:
        app.extensions["parseq_throttle"] = Throttle(app.extensions["parseq"].config)


def current() -> Throttle:
    """The current app's throttle."""
    return current_app.extensions["parseq_throttle"]
