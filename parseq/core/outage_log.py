"""Logging a service outage by its state changes, not by every failed call.

During a broker outage every POST of a run failed its send, and each logged a traceback (with
pika's own errors, thousands in seconds). :class:`OutageLog` logs one error when calls start
failing, a one-line summary while the outage lasts, and one line when a call succeeds again.
"""

from __future__ import annotations

import logging
import threading
import time

#: How often a still-failing service gets a summary line, in seconds.
SUMMARY_EVERY_S = 60.0


class OutageLog:
    """The up/down state of one service as this process's calls to it saw it."""

    def __init__(
        self, what: str, logger: logging.Logger, summary_every_s: float = SUMMARY_EVERY_S
    ) -> None:
        self.what = what
        self.logger = logger
        self.summary_every_s = summary_every_s
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_line = 0.0
        self._failures = 0

    def failed(self, exc: BaseException, consequence: str) -> None:
        """Count a failed call; log the outage's start, or a summary when one is due."""
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            if self._down_since is None:
                self._down_since = self._last_line = now
                started, summary = True, None
            else:
                started = False
                due = now - self._last_line >= self.summary_every_s
                summary = (now - self._down_since, self._failures) if due else None
                if due:
                    self._last_line = now
        if started:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.logger.error("%s is unreachable (%s); %s", self.what, reason, consequence)
        elif summary is not None:
            self.logger.warning(
                "%s still unreachable after %.0f s: %d attempt(s) failed so far",
                self.what,
                *summary,
            )

    def succeeded(self) -> None:
        """A call went through: log the end of an outage, if there was one."""
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted, failures = time.monotonic() - self._down_since, self._failures
            self._down_since, self._failures = None, 0
        self.logger.warning(
            "%s is reachable again after %.1f s; %d attempt(s) failed meanwhile",
            self.what,
            lasted,
            failures,
        )
