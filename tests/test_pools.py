"""Process-local thread pools: one set of threads per process, a fresh one after a fork."""

from __future__ import annotations

import os
import threading

from parseq.core.pools import ForkSafeThreadPool


def test_a_forked_child_gets_threads_of_its_own() -> None:
    pool = ForkSafeThreadPool(1, "probe")
    parent_thread = pool.call(threading.get_ident)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool threads did not come along
        try:
            ok = pool.call(lambda: threading.current_thread().name.startswith("probe"))
            os.write(write, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok" and os.waitstatus_to_exitcode(status) == 0
    assert pool.call(threading.get_ident) == parent_thread  # the parent keeps its own
