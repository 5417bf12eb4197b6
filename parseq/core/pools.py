"""Thread pools that belong to one process: started on first use, and started afresh in a
forked child (gunicorn forks its workers after the app is built), which inherits no threads."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ForkSafeThreadPool:
    """Up to ``max_workers`` threads named ``name-N``, started as work arrives."""

    def __init__(self, max_workers: int, name: str) -> None:
        self.max_workers = max_workers
        self.name = name
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix=self.name)
                self._pid = os.getpid()
            pool = self._pool
        return pool.submit(fn, *args, **kwargs)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a thread of the pool; its exception is raised here."""
        return self.submit(fn, *args, **kwargs).result()
