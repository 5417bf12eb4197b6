"""Supervise a started parser process: stream its output into a capped, redacted log, enforce
the wall-clock timeout and cancellation by killing its whole process group, report the outcome.

All of it happens in the calling thread: both pipes and the process's exit are multiplexed
with ``select`` (a pidfd, or a fork server's report socket).
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import signal
import subprocess  # nosec B404  # the type of a started parser process
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from parseq.core.enums import RunStatus
from parseq.core.redaction import StreamRedactor
from parseq.sandbox import forkserver, procs

log = logging.getLogger(__name__)

LOG_TRUNCATED_MARKER = b"\n[parseq: log truncated at %d bytes]\n"
#: Longest piece of output read at once: a script printing 1 GB without a newline must not
#: make the worker hold 1 GB.
READ_CHUNK_BYTES = 64 * 1024
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

#: A started parser: a fresh interpreter or a fork server's child.
Process = subprocess.Popen[bytes] | forkserver.ForkedProcess

#: ``on_line(stream, line)``: called for every output line, ``stream`` is "stdout" or "stderr".
LineCallback = Callable[[str, bytes], None]


@dataclass
class Outcome:
    """How a supervised process ended."""

    status: RunStatus
    exit_code: int | None
    error: str | None
    duration_s: float
    log_bytes: int


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal every process of the group; False when none is left."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class _LogSink:
    """Writes both streams into one capped log and keeps the stderr tail, with the values of
    ``secrets`` replaced by ``***`` before anything is written, kept or passed on. Output is
    fed as read; it is cut into lines (or pieces of at most ``READ_CHUNK_BYTES``)."""

    def __init__(
        self,
        fh: IO[bytes],
        max_bytes: int,
        tail_bytes: int,
        on_line: LineCallback | None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.fh = fh
        self.max_bytes = max_bytes
        self.written = 0
        self.truncated = False
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.tail_bytes = tail_bytes
        self.on_line = on_line
        secrets = tuple(secrets)
        self.redactors = {name: StreamRedactor(secrets) for name in ("stdout", "stderr")}
        self.partial = {"stdout": b"", "stderr": b""}

    def feed(self, name: str, data: bytes) -> None:
        """``data`` read from stream ``name``; an empty ``data`` is its end."""
        buf = self.partial[name] + data
        start = 0
        while True:
            end = buf.find(b"\n", start, start + READ_CHUNK_BYTES)
            if end < 0 and len(buf) - start < READ_CHUNK_BYTES:
                break
            end = start + READ_CHUNK_BYTES - 1 if end < 0 else end
            self._emit(name, self.redactors[name].feed(buf[start : end + 1]))
            start = end + 1
        self.partial[name] = buf[start:]
        if not data:
            self.partial[name] = b""
            self._emit(name, self.redactors[name].feed(buf[start:]) if start < len(buf) else b"")
            self._emit(name, self.redactors[name].flush())
        self.fh.flush()

    def _emit(self, name: str, line: bytes) -> None:
        if not line:
            return
        if self.on_line is not None:
            try:
                self.on_line(name, line)
            except Exception:  # a faulty callback must not stop the log
                log.exception("line callback failed")
        self._write(line)
        if name == "stderr":
            self._remember(line)

    def _write(self, line: bytes) -> None:
        if self.truncated:
            return
        room = self.max_bytes - self.written
        if len(line) > room:
            self.fh.write(line[: max(room, 0)])
            self.fh.write(LOG_TRUNCATED_MARKER % self.max_bytes)
            self.written = self.max_bytes
            self.truncated = True
        else:
            self.fh.write(line)
            self.written += len(line)

    def _remember(self, line: bytes) -> None:
        self.tail.append(line)
        self.tail_len += len(line)
        while self.tail_len > self.tail_bytes and len(self.tail) > 1:
            self.tail_len -= len(self.tail.popleft())

    def stderr_tail(self) -> str:
        data = b"".join(self.tail)[-self.tail_bytes :]
        # Binary output must not reach the database: PostgreSQL refuses NUL in text.
        return _CONTROL_CHARS.sub("\ufffd", data.decode("utf-8", "replace")).strip()


class _Watch:
    """One thread's view of a running process: its two output pipes and its exit, multiplexed
    with ``select``, so supervising a run costs no thread of its own."""

    def __init__(self, proc: Process, sink: _LogSink) -> None:
        self.proc = proc
        self.sink = sink
        self.sel = selectors.DefaultSelector()
        self.open_streams = 0
        for name in ("stdout", "stderr"):
            stream = getattr(proc, name)
            os.set_blocking(stream.fileno(), False)
            self.sel.register(stream.fileno(), selectors.EVENT_READ, name)
            self.open_streams += 1
        self.exit_fd, self.own_exit_fd = _exit_fd(proc)
        # A very short run's exit report may have come with its pid: nothing left to wait for.
        self.exited = isinstance(proc, forkserver.ForkedProcess) and proc.exit_reported()
        if not self.exited:
            self.sel.register(self.exit_fd, selectors.EVENT_READ, None)

    def step(self, timeout_s: float) -> None:
        """Handle what is ready within ``timeout_s``: output, the end of a stream, the exit."""
        for key, _ in self.sel.select(max(timeout_s, 0)):
            if key.data is None:
                self.sel.unregister(self.exit_fd)
                self.exited = True
                continue
            try:
                data = os.read(key.fd, READ_CHUNK_BYTES)
            except BlockingIOError:
                continue
            self.sink.feed(key.data, data)
            if not data:
                self.sel.unregister(key.fd)
                self.open_streams -= 1

    def until_exit(self, deadline: float) -> bool:
        """Pump output until the process exits (True) or ``deadline`` (monotonic) passes."""
        while not self.exited:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.step(min(left, 60.0))  # the selector takes no infinity
        return True

    def drain(self, timeout_s: float) -> None:
        """Read the rest of the output; a grandchild still holding a pipe is given up on."""
        deadline = time.monotonic() + timeout_s
        while self.open_streams and time.monotonic() < deadline:
            self.step(deadline - time.monotonic())

    def close(self) -> None:
        self.sel.close()
        if self.own_exit_fd:
            os.close(self.exit_fd)
        for name in ("stdout", "stderr"):
            stream = getattr(self.proc, name)
            if not stream.closed:
                stream.close()


def _exit_fd(proc: Process) -> tuple[int, bool]:
    """A file descriptor that becomes readable when ``proc`` exits, and whether it is ours to
    close: the fork server's report socket, else a pidfd (Linux 5.3+), else a pipe that a
    thread blocked in ``wait()`` closes."""
    if isinstance(proc, forkserver.ForkedProcess):
        return proc.exit_fd(), False
    try:
        return os.pidfd_open(proc.pid), True
    except (AttributeError, OSError):
        r, w = os.pipe()

        def waiter() -> None:
            proc.wait()
            os.close(w)

        threading.Thread(target=waiter, name=f"wait-{proc.pid}", daemon=True).start()
        return r, True


def supervise(
    proc: Process,
    log_path: Path,
    *,
    timeout_s: float,
    kill_grace_s: float = 2.0,
    max_log_bytes: int = 10 * 1024 * 1024,
    error_tail_bytes: int = 2000,
    cancel: threading.Event | None = None,
    on_line: LineCallback | None = None,
    poll_s: float = 0.1,
    secrets: Iterable[str] = (),
    run_uid: int | None = None,
) -> Outcome:
    """Wait for ``proc``, streaming its output into ``log_path``; kill its group on timeout or
    cancel. The group is always killed at the end so no stray child outlives the run; with
    ``run_uid`` (the sandbox user ``runner.spawn`` started it as) so are the processes that left
    the group (:func:`procs.run_ended`). The values of ``secrets`` never reach the log, the
    error or ``on_line``: they become ``***``. All of it happens in the calling thread."""
    started = time.monotonic()
    deadline = started + timeout_s
    pgid = proc.pid  # start_new_session made the child its group leader
    with log_path.open("wb") as fh:
        sink = _LogSink(fh, max_log_bytes, error_tail_bytes, on_line, secrets)
        watch = _Watch(proc, sink)
        try:
            try:
                reason = _wait(proc, watch, pgid, deadline, cancel, poll_s, kill_grace_s)
                kill_group(pgid)  # children left behind by a script that exited
            finally:
                if run_uid is not None:  # and those that left its group (setsid, double fork)
                    procs.run_ended(run_uid)
            watch.drain(2.0)
        finally:
            watch.close()
        duration = time.monotonic() - started
        rc = proc.returncode
        if reason is RunStatus.TIMEOUT:
            error = f"timed out after {timeout_s:g} s; process group killed"
        elif reason is RunStatus.CANCELLED:
            error = "cancelled"
        elif rc == 0:
            reason, error = RunStatus.COMPLETED, None
        else:
            reason = RunStatus.ERROR
            error = sink.stderr_tail() or _describe_exit(rc)
        return Outcome(reason, rc, error, duration, sink.written)


def _wait(
    proc: Process,
    watch: _Watch,
    pgid: int,
    deadline: float,
    cancel: threading.Event | None,
    poll_s: float,
    kill_grace_s: float,
) -> RunStatus | None:
    """Pump output until ``proc`` exits; on timeout or cancel, SIGTERM its group, then SIGKILL
    after ``kill_grace_s``. Returns why it was stopped (None: it exited by itself)."""
    reason: RunStatus | None = None
    while not watch.until_exit(min(time.monotonic() + poll_s, deadline)):
        if cancel is not None and cancel.is_set():
            reason = RunStatus.CANCELLED
        elif time.monotonic() >= deadline:
            reason = RunStatus.TIMEOUT
        if reason is not None:
            kill_group(pgid, signal.SIGTERM)
            if not watch.until_exit(time.monotonic() + kill_grace_s):
                kill_group(pgid, signal.SIGKILL)
                watch.until_exit(float("inf"))
            break
    proc.wait()
    return reason


_SIGNAL_MEANING = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
}


def _describe_exit(rc: int | None) -> str:
    if rc is not None and rc < 0 and -rc in _SIGNAL_MEANING:
        return f"{_SIGNAL_MEANING[signal.Signals(-rc)]} (killed by {signal.Signals(-rc).name})"
    if rc is not None and rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"
