"""The fork server of one parser env: ``<env>/bin/python -I -S zygote.py CONTROL_FD``.

A worker (:mod:`parseq.sandbox.forkserver`) starts it once per env and sends it, for each run, one
message on the control socket: a socket of the run's own and the write ends of the run's stdout
and stderr pipes. The server forks at once. The child takes a session of its own, writes
``P<pid>`` on the run's socket and reads the job (argv, environment, folder, limits, user)
from it, so the server never holds a run's arguments or secrets; it sets up the sandbox
(limits, user, parent-death signal, no inherited files), runs the script as ``__main__`` as
``python script.py`` would, and exits as the interpreter would, less the module-by-module
teardown (:func:`shut_down`). The server writes ``X<exit code>`` once it has reaped the child.

A run saves the interpreter's start-up. What it costs in isolation: every run
shares the server's address-space layout and string-hash seed. The server imports only the
standard library, and ``-S`` keeps the env's site-packages (the ``.pth`` files of the parser's
requirements) out of it, as it may run as root: each child adds them after dropping to the
sandbox user. The server is not dumpable, so a parser running as the same user cannot attach
to it and tamper with later runs; the child is made dumpable again (as an exec would), so it
differs from a fresh start only in what the README lists.

Both are child subreapers: what a run starts and leaves behind (a double fork, a new session)
stays below the run's process while it lives, and comes to the server when it ends; the server
kills all of it before it reports the run's exit.

Standard library only; nothing of Parseq is importable here.
"""

import atexit
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import importlib.machinery
import io
import json
import os
import resource
import selectors
import signal
import site  # imported, not run: -S; each child runs site.main() as the sandbox user
import socket
import struct
import sys

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_prctl = _libc.prctl


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


def serve(control: socket.socket) -> dict | None:
    """Fork a child per run request until the control socket closes (the worker is gone: the
    children then die by their parent-death signal). Returns the job in a child, None in the
    server."""
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, None)
    running: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, run socket)
    server_pid = os.getpid()
    while True:
        for key, _ in sel.select():
            if key.data is not None:
                pid, run_sock = running.pop(key.fd)
                sel.unregister(key.fd)
                os.close(key.fd)
                _reap(pid, run_sock, {p for p, _ in running.values()})
                continue
            try:
                msg, fds, _flags, _addr = socket.recv_fds(control, 16, 3)
            except OSError:
                return None
            if not msg:
                return None
            if len(fds) != 3:  # not a request of the worker's: drop it
                for fd in fds:
                    os.close(fd)
                continue
            run_sock, out_fd, err_fd = socket.socket(fileno=fds[0]), fds[1], fds[2]
            try:
                pid = os.fork()
            except OSError:  # out of processes or memory: this run fails, the server stays
                pid = -1
            if pid == 0:
                sel.close()
                control.close()
                for pidfd, (_, other) in running.items():
                    os.close(pidfd)
                    other.close()
                return _child(run_sock, out_fd, err_fd, server_pid)
            os.close(out_fd)
            os.close(err_fd)
            if pid < 0:
                run_sock.close()  # the worker sees the end of the stream: no run
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                os.kill(pid, signal.SIGKILL)
                _reap(pid, run_sock, {p for p, _ in running.values()})
                continue
            running[pidfd] = (pid, run_sock)
            sel.register(pidfd, selectors.EVENT_READ, pid)


def _reap(pid: int, run_sock: socket.socket, running: set[int]) -> None:
    """Wait for the exited child, kill what it left behind, report its exit code to the
    worker."""
    _, status = os.waitpid(pid, 0)
    _kill_orphans(running)
    _report(run_sock, b"X%d\n" % os.waitstatus_to_exitcode(status))
    run_sock.close()


def _kill_orphans(running: set[int]) -> None:
    """SIGKILL and reap every child but the runs still ``running``: orphans of ended runs, re-
    parented here. Again until none is left: one forking as it dies leaves more."""
    while True:
        orphans = [p for p in children() if p not in running]
        if not orphans:
            return
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in orphans:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def children(pid: int | None = None) -> list[int]:
    """The pids of the children of process ``pid`` (this one by default), adopted orphans
    included. Shared with the worker (:mod:`parseq.sandbox.procs`): this module stays standard
    library only, as it runs alone in a parser env's interpreter."""
    pid = os.getpid() if pid is None else pid
    found: list[int] = []
    if os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as fh:
                found += [int(p) for p in fh.read().split()]  # a thread may end meanwhile
        return found
    # A kernel without CONFIG_PROC_CHILDREN: ask every process for its parent.
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with (
            contextlib.suppress(OSError, ValueError, IndexError),
            open(f"/proc/{entry}/stat") as fh,
        ):
            if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _report(run_sock: socket.socket, line: bytes) -> None:
    with contextlib.suppress(OSError):  # the worker gave up on the run: reaped all the same
        run_sock.sendall(line)


def _child(run_sock: socket.socket, out_fd: int, err_fd: int, server_pid: int) -> dict:
    """Set up the sandbox in the forked child; any failure ends it with one line on stderr."""
    try:
        # A group of its own before the worker learns the pid: it signals the whole group.
        os.setsid()
        run_sock.sendall(b"P%d\n" % os.getpid())
        job = _read_job(run_sock)
        devnull = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((devnull, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(fd, target)
        # Limits first: a privileged process may set them as given, the sandbox user may not.
        for res, soft, hard in job["limits"]:
            resource.setrlimit(res, (soft, hard))
        if job["user"] is not None:
            uid, gid = job["user"]
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            _drop_caps()
        # After the user switch, which clears it (prctl(2)).
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != server_pid:  # the server died before prctl took effect
            os._exit(1)
        os.chdir(job["cwd"])
        os.closerange(3, 2**31 - 1)  # the run socket, the server's other files
        # What it starts stays below it while it runs (then comes to the server: _reap).
        _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        # Dumpable as after an exec (its own /proc/self/environ readable, core dumps): the
        # server's memory it holds has nothing of the worker's, the job is its own.
        _prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    except Exception as exc:
        os.write(2, f"parseq: could not start the parser: {exc}\n".encode())
        os._exit(1)
    return job


def _drop_caps() -> None:
    """Drop every capability: a non-root worker's (ambient) ones outlive a uid change between
    two non-zero uids, and this child execs nothing that would drop them."""
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    if _libc.capset(ctypes.byref(header), (_CapData * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _read_job(run_sock: socket.socket) -> dict:
    head = _read_exactly(run_sock, 8)
    return json.loads(_read_exactly(run_sock, struct.unpack("!Q", head)[0]))


def _read_exactly(run_sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = run_sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the worker closed the run's socket")
        buf += chunk
    return bytes(buf)


def prepare(job: dict, flags: tuple) -> tuple[str, object]:
    """Make this child look like ``python script.py args...`` started with the job's
    environment: variables, argv, sys.path with the env's site-packages, stdio; return the
    script's path and its compiled code. ``flags``: the script's ``sys.flags``
    (:func:`_fresh_flags`)."""
    env = job["env"]
    coerced = os.environ.get("LC_CTYPE")
    os.environ.clear()
    os.environ.update(env)
    if coerced and "LC_CTYPE" not in env:
        # The server's start set it (PEP 538: a C locale coerced to UTF-8), as a fresh start
        # with the same locale variables would have; the server's were the job's.
        os.environ["LC_CTYPE"] = coerced
    script = job["argv"][0]
    sys.argv = list(job["argv"])
    sys.orig_argv = [sys.executable, *sys.argv]
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [os.path.dirname(os.path.realpath(script)), *extra]
    site.main()
    sys.flags = flags
    if env.get("PYTHONUNBUFFERED"):
        for fd, name, errors in ((1, "stdout", "strict"), (2, "stderr", "backslashreplace")):
            stream = io.TextIOWrapper(
                io.FileIO(fd, "w", closefd=False),
                encoding=getattr(sys, name).encoding,
                errors=errors,
                write_through=True,
            )
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)
    with io.open_code(script) as fh:
        code = compile(fh.read(), script, "exec", dont_inherit=True)
    return script, code


def _fresh_flags() -> tuple:
    """``sys.flags`` as a fresh ``python script.py`` has them, not ``-I -S``: code reads them
    to start more Pythons alike (``subprocess._args_from_interpreter_flags``, multiprocessing's
    spawn), which must get the env's site-packages too."""
    names = type(sys.flags).__match_args__
    values = dict(zip(names, sys.flags, strict=True))
    values.update(no_user_site=0, no_site=0, ignore_environment=0, isolated=0, safe_path=False)
    return collections.namedtuple("flags", names)(**values)


def run(code: object, main_module: object) -> int:
    """Run the script's code; return its exit status as the interpreter would set it, after
    reporting an uncaught exception (without this file's frames) or a SystemExit message."""
    try:
        exec(code, main_module.__dict__)  # nosec B102  # running the parser is the job here
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code & 0xFF
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return -signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1
    return 0


def shut_down(status: int, main_module: object) -> None:
    """Exit as the interpreter would, less what costs and shows nothing: non-daemon threads
    are joined, atexit handlers run, the script's objects released (files it left open are
    flushed and closed), streams flushed; the modules are not torn down one by one."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    atexit._run_exitfuncs()
    main_module.__dict__.clear()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing to flush to
            stream.flush()
    if status == -signal.SIGINT:  # like the interpreter: die by the signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    _prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # the runs' orphans come here (_reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the worker
    # The first compile() of a process sets up the parser: do it once, here, not per child.
    with io.open_code(__file__) as fh:
        compile(fh.read(), __file__, "exec", dont_inherit=True)
    # Made once: making a namedtuple class compiles code, which every child would repeat.
    flags = _fresh_flags()
    # Children do not collect (and so do not copy, page by page) the server's own objects.
    gc.freeze()
    job = serve(control)
    if job is None:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        script, code = prepare(job, flags)
    except SyntaxError as exc:  # reported as the interpreter does: no traceback, exit 1
        sys.excepthook(type(exc), exc.with_traceback(None), None)
        sys.stderr.flush()
        os._exit(1)
    except OSError as exc:  # an unreadable script, in the interpreter's words
        print(
            f"{sys.executable}: can't open file {job['argv'][0]!r}: "
            f"[Errno {exc.errno}] {exc.strerror}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)
    main_module = type(sys)("__main__")
    main_module.__file__ = script
    main_module.__cached__ = None
    main_module.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    sys.modules["__main__"] = main_module
    shut_down(run(code, main_module), main_module)


if __name__ == "__main__":
    main()
