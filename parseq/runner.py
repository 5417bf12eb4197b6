"""Run a parser script as a sandboxed subprocess and supervise it.

Two pure builders (:func:`build_command`, :func:`build_env`) say what to run; :func:`spawn`
starts it in its own process group; :func:`supervise` streams its output to a log, enforces the
wall-clock timeout and cancellation by killing the whole group, and reports the outcome.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
import re
import selectors
import signal
import subprocess  # nosec B404  # running parser scripts as child processes is the job
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from parseq import forkserver
from parseq.errors import ValidationError
from parseq.models import RunStatus
from parseq.redaction import StreamRedactor
from parseq.sandbox import (
    Launcher,
    RLimit,
    SandboxUser,
    apply_rlimits,
    clamp_rlimits,
    find_launcher,
    launcher_argv,
)

log = logging.getLogger(__name__)

ARG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Variables a secret may not shadow: the contract's and the ones the sandbox sets.
RESERVED_ENV = frozenset(
    {"PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LC_ALL", "PYTHONUNBUFFERED", "PYTHONPATH"}
)
LOG_TRUNCATED_MARKER = b"\n[parseq: log truncated at %d bytes]\n"
#: Longest piece of output read at once: a script printing 1 GB without a newline must not
#: make the worker hold 1 GB.
READ_CHUNK_BYTES = 64 * 1024
#: prctl(2) option: the signal the child gets when the worker that started it dies.
PR_SET_PDEATHSIG = 1
_PRCTL = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "prctl", None)  # Linux only
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

#: A started parser: a fresh interpreter or a fork server's child.
Process = subprocess.Popen[bytes] | forkserver.ForkedProcess

#: ``on_line(stream, line)``: called for every output line, ``stream`` is "stdout" or "stderr".
LineCallback = Callable[[str, bytes], None]


def validate_arg_name(name: str) -> str:
    """Argument names become ``--name`` flags: keep them to safe identifiers."""
    if not isinstance(name, str) or not ARG_NAME_RE.match(name):
        raise ValidationError(
            f"argument name {name!r} must start with a letter or _ and contain only "
            "letters, digits, _ and - (at most 64)",
            field="args",
        )
    return name


def validate_secret_name(name: str) -> str:
    """Secret names become environment variables of their own."""
    if not isinstance(name, str) or not SECRET_NAME_RE.match(name):
        raise ValidationError(
            f"secret name {name!r} must be a valid environment variable name "
            "(letters, digits, _; not starting with a digit)",
            field="secrets",
        )
    if name in RESERVED_ENV or name.upper().startswith("PARSEQ_"):
        raise ValidationError(f"secret name {name!r} is reserved by Parseq", field="secrets")
    return name


def arg_to_str(value: Any) -> str:
    """How an argument value appears in argv: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def build_command(
    interpreter: Path | str, script: Path | str, args: Mapping[str, Any]
) -> list[str]:
    """The argv of a run: ``<interpreter> <script> --key value ...`` in the args' order."""
    argv = [str(interpreter), str(script)]
    for name, value in args.items():
        argv += [f"--{validate_arg_name(name)}", arg_to_str(value)]
    return argv


def build_env(
    *,
    base_env: Mapping[str, str],
    run_id: int,
    parser: str,
    args: Mapping[str, Any],
    secrets: Mapping[str, str],
    output_dir: Path,
    state_dir: Path,
    home_dir: Path,
    tmp_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's whole environment: nothing of Parseq's own environment leaks in.

    ``base_env`` gives only PATH and locale variables; secrets each get a variable of their own.
    """
    env = {k: v for k, v in base_env.items() if k == "PATH" or k == "LANG" or k.startswith("LC_")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        {
            "HOME": str(home_dir),
            "TMPDIR": str(tmp_dir),
            "TMP": str(tmp_dir),
            "TEMP": str(tmp_dir),
            "PYTHONUNBUFFERED": "1",
            "PARSEQ_RUN_ID": str(run_id),
            "PARSEQ_PARSER": parser,
            "PARSEQ_ARGS": json.dumps(dict(args)),
            "PARSEQ_OUTPUT_DIR": str(output_dir),
            "PARSEQ_STATE_DIR": str(state_dir),
            # Names only, so the SDK knows which variables are secrets (to mask them).
            "PARSEQ_SECRET_NAMES": ",".join(sorted(secrets)),
        }
    )
    env.update(extra or {})
    for name, value in secrets.items():
        env[validate_secret_name(name)] = str(value)
    return env


@dataclass
class Outcome:
    """How a supervised process ended."""

    status: RunStatus
    exit_code: int | None
    error: str | None
    duration_s: float
    log_bytes: int


def spawn(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    limits: list[RLimit] | None = None,
    user: SandboxUser | None = None,
    launcher: Launcher | Literal["auto"] | None = "auto",
    fork_servers: int = 0,
) -> Process:
    """Start the process in a new session, so it and all its children share one group; as
    ``user`` (with no supplementary groups), under ``limits``, and killed if this process dies.

    With ``fork_servers`` (the most kept per worker process), a ``python script`` command is
    forked from its env's fork server (:mod:`parseq.forkserver`), which sets up the same
    sandbox without an interpreter start; if that fails, the command starts as below.

    With a ``launcher`` (found on the machine by default) that is done by ``prlimit`` and
    ``setpriv`` exec'd in front of ``argv`` and the spawn is a cheap ``vfork()``; with None, by
    a ``preexec_fn`` in a full ``fork()`` of this process.
    """
    limits = clamp_rlimits(list(limits or []))
    if fork_servers > 0 and forkserver.can_fork(argv, env):
        try:
            return forkserver.spawn(
                argv, env, cwd, limits=limits, user=user, max_servers=fork_servers
            )
        except forkserver.ForkServerError as exc:
            log.warning("%s; starting a fresh interpreter", exc)
    if launcher == "auto":
        launcher = default_launcher()
    popen: dict[str, Any] = {}
    if launcher is not None:
        argv = [*launcher_argv(launcher, limits, user), *argv]
    else:
        popen["preexec_fn"] = _child_setup(limits, os.getpid())
        if user is not None:
            popen.update(user=user.uid, group=user.gid, extra_groups=[])
    # argv is a list (no shell); its parts are the launcher's fixed flags, the interpreter, a
    # script path resolved inside the parsers root and --name flags checked by
    # validate_arg_name: hence the nosec.
    return subprocess.Popen(  # nosec B603  # see above
        argv,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        **popen,
    )


@functools.cache
def default_launcher() -> Launcher | None:
    launcher = find_launcher()
    if launcher is None:
        log.warning("prlimit/setpriv (util-linux) not found: parsers start with a slower fork()")
    return launcher


def _child_setup(limits: list[RLimit], parent_pid: int) -> Callable[[], None]:
    """Runs in the child after the user switch, before exec: only pre-imported C calls.

    The parent-death signal makes a parser die with a SIGKILLed worker instead of running on
    unsupervised (the reaper then handles the run). It must be set after the uid change, which
    clears it (prctl(2)).
    """

    def setup() -> None:
        apply_rlimits(limits)
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the worker died before prctl took effect
            os._exit(1)

    return setup


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
        self.sel.register(self.exit_fd, selectors.EVENT_READ, None)
        self.exited = False
        if isinstance(proc, forkserver.ForkedProcess) and proc.exit_reported():
            self.sel.unregister(self.exit_fd)
            self.exited = True

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
) -> Outcome:
    """Wait for ``proc``, streaming its output into ``log_path``; kill its group on timeout or
    cancel. The group is always killed at the end so no stray child outlives the run. The
    values of ``secrets`` never reach the log, the error or ``on_line``: they become ``***``.
    All of it happens in the calling thread."""
    started = time.monotonic()
    deadline = started + timeout_s
    pgid = proc.pid  # start_new_session made the child its group leader
    with log_path.open("wb") as fh:
        sink = _LogSink(fh, max_log_bytes, error_tail_bytes, on_line, secrets)
        watch = _Watch(proc, sink)
        try:
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
            kill_group(pgid)  # children left behind by a script that exited
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
