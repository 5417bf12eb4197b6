"""Start parser scripts by forking a pre-started interpreter of their env (a fork server).

Starting a fresh sandboxed interpreter is most of what a short run costs (bench/RESULTS.md has
the figures). A worker instead keeps one :mod:`parseq.sandbox.zygote` process per env it has
recently used and asks it to fork each run; the child sets up the same sandbox a fresh
interpreter gets (its own session, resource limits, the sandbox user, death with its parent, no
inherited files, a clean environment) and runs the script. See :mod:`parseq.sandbox.zygote` for
what that trades.

:func:`spawn` returns a :class:`ForkedProcess`, which :func:`parseq.sandbox.supervisor.supervise`
handles like a ``subprocess.Popen``. ``parseq.sandbox.runner.spawn`` starts a fresh interpreter
instead when :func:`can_fork` says no or a server fails; ``PARSEQ_FORK_SERVERS=0`` turns fork
servers off.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess  # nosec B404  # the fork server is a child process of the worker
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from parseq.core.errors import ParseqError
from parseq.sandbox.limits import RLimit, SandboxUser

log = logging.getLogger(__name__)

ZYGOTE = Path(__file__).with_name("zygote.py")
#: How long a fork server may take to answer a run request with the child's pid, in seconds.
REPLY_TIMEOUT_S = 10.0
#: Variables of the child's environment that the child applies itself (parseq.sandbox.zygote).
APPLIED_ENV = frozenset({"PYTHONPATH", "PYTHONUNBUFFERED"})


class ForkServerError(ParseqError):
    """A fork server could not start a run (it died, or never started)."""


def can_fork(argv: list[str], env: Mapping[str, str]) -> bool:
    """Whether a fork server can start ``argv`` exactly as a fresh interpreter would: a plain
    ``python script args...`` (no interpreter options) with no ``PYTHON*`` variable that only a
    fresh start reads (a secret named ``PYTHONHASHSEED``, say)."""
    if len(argv) < 2 or argv[1].startswith("-") or not hasattr(os, "pidfd_open"):
        return False
    return not any(k.startswith("PYTHON") and k not in APPLIED_ENV for k in env)


class ForkedProcess:
    """A run forked by a fork server: what the supervisor uses of ``subprocess.Popen``.
    Its exit code arrives on its socket, as the server (its parent) reaps it."""

    def __init__(
        self,
        pid: int,
        sock: socket.socket,
        stdout: IO[bytes],
        stderr: IO[bytes],
        buf: bytes = b"",
        server: ForkServer | None = None,
    ) -> None:
        self.pid = pid
        self.args = ["<fork server>", pid]
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._sock = sock
        self._buf = buf  # what arrived after the pid: maybe the exit already
        self._lock = threading.Lock()
        self._server = server

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            if self.returncode is None:
                self._sock.settimeout(timeout)
                try:
                    line, self._buf = _read_line(self._sock, self._buf)
                except (TimeoutError, BlockingIOError):
                    raise subprocess.TimeoutExpired(self.args, timeout) from None
                if line is None or not line.startswith(b"X"):
                    # The server died; its children die with it (their parent-death signal).
                    log.warning("fork server lost while running pid %d", self.pid)
                    self.returncode = -signal.SIGKILL
                else:
                    self.returncode = int(line[1:])
                self._sock.close()
                _release(self)
            return self.returncode

    def exit_fd(self) -> int:
        """Readable once the server has reported the exit (or died)."""
        return self._sock.fileno()

    def exit_reported(self) -> bool:
        """Whether the exit report already arrived with the pid (a very short run)."""
        return self.returncode is not None or b"\n" in self._buf

    def poll(self) -> int | None:
        try:
            return self.wait(timeout=0)
        except subprocess.TimeoutExpired:
            return None


def _read_line(sock: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    """The next ``\\n``-ended report line (None at end of stream) after what ``buf`` holds
    already, and what came after it."""
    while b"\n" not in buf:
        chunk = sock.recv(64)
        if not chunk:
            return None, buf
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    return line, rest


#: What a server is kept for: the env's interpreter and the uid its runs switch to (None: none).
ServerKey = tuple[str, int | None]


class ForkServer:
    """One :mod:`parseq.sandbox.zygote` process, for the env whose interpreter is ``python``."""

    def __init__(self, python: str, env: Mapping[str, str]) -> None:
        self.python = python
        self.active = 0  # runs forked and not yet waited for: a busy server is not stopped
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Fixed argv: the env's interpreter, isolated and without site, and our own file.
            self.proc = subprocess.Popen(  # nosec B603  # see above
                [python, "-I", "-S", str(ZYGOTE), str(theirs.fileno())],
                env=dict(env),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise ForkServerError(f"fork server for {python} did not start: {exc}") from exc
        finally:
            theirs.close()
        self.control = ours
        self.lock = threading.Lock()

    def spawn(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        limits: list[RLimit],
        user: SandboxUser | None,
    ) -> ForkedProcess:
        job = json.dumps(
            {
                "argv": argv[1:],
                "env": dict(env),
                "cwd": str(cwd),
                "limits": limits,
                "user": None if user is None else [user.uid, user.gid],
            }
        ).encode()
        ours, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            with self.lock:
                socket.send_fds(self.control, [b"R"], [theirs.fileno(), out_w, err_w])
            # The child reads this; the server only forks it and never sees it.
            ours.settimeout(REPLY_TIMEOUT_S)
            ours.sendall(struct.pack("!Q", len(job)) + job)
            # The server writes nothing on the control socket: readable there means it died
            # (and the request it never read keeps our run socket's other end open).
            poll = select.poll()
            poll.register(ours, select.POLLIN)
            poll.register(self.control, select.POLLIN)
            ready = {fd for fd, _ in poll.poll(REPLY_TIMEOUT_S * 1000)}
            line, rest = _read_line(ours, b"") if ours.fileno() in ready else (None, b"")
            if line is None or not line.startswith(b"P"):
                raise ForkServerError("no answer")
            ours.settimeout(None)
        except (OSError, ForkServerError) as exc:
            ours.close()
            os.close(out_r)
            os.close(err_r)
            raise ForkServerError(f"fork server for {self.python} failed: {exc}") from exc
        finally:
            theirs.close()
            os.close(out_w)
            os.close(err_w)
        stdout, stderr = os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb")
        return ForkedProcess(int(line[1:]), ours, stdout, stderr, buf=rest, server=self)

    def alive(self) -> bool:
        """Not exited, and not exiting: the server never writes on the control socket, so a
        readable one is at its end."""
        if self.proc.poll() is not None:
            return False
        poll = select.poll()
        poll.register(self.control, select.POLLIN)
        return not poll.poll(0)

    def stop(self) -> None:
        """Close the control socket: the server exits (and reaps itself in a thread)."""
        self.control.close()
        threading.Thread(target=self.proc.wait, daemon=True).start()


#: Servers by (interpreter, uid of the runs' sandbox user): runs of different users never
#: share a server (its address-space layout and hash seed).
_servers: OrderedDict[ServerKey, ForkServer] = OrderedDict()
_servers_lock = threading.Lock()
_servers_pid = 0


def _release(proc: ForkedProcess) -> None:
    server = proc._server
    if server is not None:
        with _servers_lock:
            server.active -= 1


def spawn(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    limits: list[RLimit],
    user: SandboxUser | None,
    max_servers: int,
) -> ForkedProcess:
    """Start ``argv`` (``python script args...``, see :func:`can_fork`) from the fork server
    of its interpreter and ``user``, started on first use; the least recently used idle servers past
    ``max_servers`` stop. Raises :class:`ForkServerError` when it fails: a dead server is
    started again once, a live one is kept (with its other runs)."""
    global _servers_pid
    python = argv[0]
    key: ServerKey = (python, None if user is None else user.uid)
    for attempt in (1, 2):
        with _servers_lock:
            if _servers_pid != os.getpid():  # a forked copy of the worker: not its servers
                _servers.clear()
                _servers_pid = os.getpid()
            server = _servers.get(key)
            if server is not None and not server.alive():
                del _servers[key]
                server = None
            if server is None:
                # The server's locale is the child's: it sets the encoding of the child's stdio.
                locale = {k: v for k, v in env.items() if k == "LANG" or k.startswith("LC_")}
                server = _servers[key] = ForkServer(python, locale)
            _servers.move_to_end(key)
            _evict(max_servers, keep=key)
            server.active += 1
        try:
            return server.spawn(argv, env, cwd, limits, user)
        except ForkServerError:
            alive = server.alive()
            with _servers_lock:
                server.active -= 1
                if not alive and _servers.get(key) is server:
                    del _servers[key]
            # A live server keeps its other runs: only this one starts fresh.
            if alive or attempt == 2:
                raise
            server.stop()
    raise AssertionError("unreachable")


def _evict(max_servers: int, keep: ServerKey) -> None:
    idle = [k for k, s in _servers.items() if s.active == 0 and k != keep]
    for key in idle[: max(0, len(_servers) - max_servers)]:
        _servers.pop(key).stop()


def stop_all() -> None:
    """Stop every fork server of this process (tests; a worker's just close with it)."""
    with _servers_lock:
        while _servers:
            _servers.popitem()[1].stop()
