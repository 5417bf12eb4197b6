"""``progress()``: report how far the run is, for the worker to show on the run while it goes.

The latest report is written atomically to ``PARSEQ_PROGRESS_FILE`` (a JSON object), which the
worker reads on each heartbeat: only the newest value matters, so nothing queues up and a loop
may call ``progress()`` as often as it likes. Writes are throttled; the last report of a run is
always written (at the end of a loop, when ``done`` reaches ``total``, and at exit).
Locally the report is printed on stderr as well.
"""

from __future__ import annotations

import atexit
import json
import math
import operator
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar, overload

from parseq_sdk._atomic import write_atomic
from parseq_sdk.run_context import context

T = TypeVar("T")
#: Least time between two writes of the progress file, in seconds.
MIN_INTERVAL_S = 0.2
MAX_MESSAGE_CHARS = 500


class _Reporter:
    """Keeps the latest report and writes it at most every ``MIN_INTERVAL_S``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, Any] | None = None
        self.last_write = -math.inf

    def report(self, done: float, total: float | None, message: str) -> None:
        for name, value in (("done", done), ("total", total)):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"progress {name} must be a finite number, got {value!r}")
        entry = {
            "done": done,
            "total": total,
            "message": str(message)[:MAX_MESSAGE_CHARS],
            "updated_at": time.time(),
        }
        with self.lock:
            self.pending = entry
            now = time.monotonic()
            finished = total is not None and done >= total
            if finished or now - self.last_write >= MIN_INTERVAL_S:
                self._write(now)

    def flush(self) -> None:
        with self.lock:
            if self.pending is not None:
                self._write(time.monotonic())

    def _write(self, now: float) -> None:
        entry, self.pending, self.last_write = self.pending, None, now
        assert entry is not None
        write_atomic(context.progress_file, json.dumps(entry).encode())
        if not context.under_parseq:
            total = f"/{entry['total']:g}" if entry["total"] is not None else ""
            text = f" {entry['message']}" if entry["message"] else ""
            print(f"[progress] {entry['done']:g}{total}{text}", file=sys.stderr)


_reporter = _Reporter()
atexit.register(_reporter.flush)


class Tracker(Iterator[T]):
    """tqdm-style progress: wrap an iterable, or count by hand with ``update()``.

    ``for page in progress(pages): ...`` or ``with progress(total=n) as bar: bar.update()``.
    """

    def __init__(
        self, iterable: Iterable[T] | None = None, total: float | None = None, message: str = ""
    ) -> None:
        if total is None and iterable is not None:
            total = operator.length_hint(iterable, -1)
            total = None if total < 0 else total
        self.total = total
        self.message = message
        self.done: float = 0
        self._it = iter(iterable) if iterable is not None else None
        self._started = False
        _reporter.report(0, total, message)

    def __iter__(self) -> Tracker[T]:
        return self

    def __next__(self) -> T:
        if self._it is None:
            raise TypeError("this progress tracker wraps no iterable; call update() instead")
        if self._started:
            self.update()  # the previous item has been processed
        self._started = True
        try:
            return next(self._it)
        except StopIteration:
            self._started = False  # asking again after the end counts nothing more
            _reporter.flush()
            raise

    def update(self, n: float = 1) -> None:
        self.done += n
        _reporter.report(self.done, self.total, self.message)

    def set_description(self, message: str) -> None:
        self.message = message
        _reporter.report(self.done, self.total, message)

    def close(self) -> None:
        _reporter.flush()

    def __enter__(self) -> Tracker[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@overload
def progress(done: float, total: float | None = None, message: str = "") -> None: ...
@overload
def progress(
    done: Iterable[T] | None = None, total: float | None = None, message: str = ""
) -> Tracker[T]: ...
def progress(done: Any = None, total: float | None = None, message: str = "") -> Any:
    """Report progress: ``progress(3, 10, "page 3")``. Given an iterable (or nothing), returns
    a tqdm-style :class:`Tracker` instead: ``for x in progress(items): ...``."""
    if done is None or (not isinstance(done, (int, float)) and isinstance(done, Iterable)):
        return Tracker(done, total, message)
    _reporter.report(done, total, message)
    return None


def flush() -> None:
    """Write a throttled report now (done at exit anyway)."""
    _reporter.flush()
