"""Fork servers: a run forked from a pre-started interpreter must look and end exactly like one
started fresh, keep its secrets out of the server, and die with the server."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parseq.core.config import Config
from parseq.db.models import Parser, RunStatus, db
from parseq.sandbox import forkserver, runner, supervisor
from parseq.sandbox.limits import SandboxUser
from parseq.worker import execution
from tests.conftest import PARSER_PYTHON, running

PROBE = """\
import json, os, subprocess, sys
print(json.dumps({
    "flags": list(sys.flags), "python_args": subprocess._args_from_interpreter_flags(),
    "loader": type(__loader__).__name__,
    "argv": sys.argv, "path": sys.path, "prefix": sys.prefix, "executable": sys.executable,
    "env": dict(os.environ), "cwd": os.getcwd(), "name": __name__, "file": __file__,
    "main": sys.modules["__main__"].__file__, "stdin": sys.stdin.read(),
    "sid": os.getsid(0) == os.getpid(), "fds": sorted(os.listdir("/proc/self/fd")),
}))
"""


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    forkserver.stop_all()


def _spawn(argv: list[str], env: dict[str, str], cwd: Path, **kwargs):  # type: ignore[no-untyped-def]
    kwargs.setdefault("fork_servers", 2)
    return runner.spawn(argv, env, cwd, **kwargs)


def _communicate(proc: supervisor.Process) -> tuple[str, str, int]:
    out, err = proc.stdout.read(), proc.stderr.read()
    return out.decode(), err.decode(), proc.wait(timeout=20)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["py", "s.py", "--a", "1"], {"PYTHONPATH": "/x", "PYTHONUNBUFFERED": "1"}, True),
        (["py", "-c", "pass"], {}, False),
        (["py", "-m", "mod"], {}, False),
        (["py"], {}, False),
        (["py", "s.py"], {"PYTHONHASHSEED": "0"}, False),
        (["py", "s.py"], {"PYTHONDONTWRITEBYTECODE": "1"}, False),
        (["py", "s.py"], {"MY_PYTHON": "1"}, True),
    ],
)
def test_can_fork_only_what_a_fresh_start_would_run_the_same(
    argv: list[str], env: dict[str, str], expected: bool
) -> None:
    assert forkserver.can_fork(argv, env) is expected


def test_a_forked_run_sees_what_a_fresh_interpreter_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARSEQ_WORKER_ONLY", "must not leak")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    (tmp_path / "work").mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "lib"), "TOKEN": "t"}
    env["PYTHONUNBUFFERED"] = "1"
    seen = []
    for fork_servers in (0, 2):
        proc = _spawn(
            [sys.executable, str(script), "--n", "1"],
            env,
            tmp_path / "work",
            fork_servers=fork_servers,
        )
        out, err, rc = _communicate(proc)
        assert rc == 0, err
        seen.append(json.loads(out))
    fresh, forked = seen
    assert forked == fresh
    # Nothing of the worker's; LC_CTYPE: Python coerces a C locale to UTF-8 (PEP 538).
    assert {k: v for k, v in forked["env"].items() if k != "LC_CTYPE"} == env
    assert forked["argv"] == [str(script), "--n", "1"]
    assert forked["path"][:2] == [str(tmp_path), str(tmp_path / "lib")]
    assert any(p.endswith("site-packages") for p in forked["path"])  # the env's packages
    assert forked["fds"] == ["0", "1", "2", "3"]  # 3: the listing's own


def test_forked_runs_end_as_the_interpreter_would(tmp_path: Path) -> None:
    """Exit codes, tracebacks (without the fork server's frames), atexit handlers, joined
    threads and files left open are all as with ``python script.py``."""
    script = tmp_path / "end.py"
    script.write_text(
        "import atexit, sys, threading, time\n"
        f"leak = open({str(tmp_path / 'left-open.txt')!r}, 'w')\n"
        "leak.write('flushed at exit')\n"
        "atexit.register(print, 'atexit ran')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
        "how = sys.argv[1]\n"
        "if how == 'raise': raise ValueError('layout changed')\n"
        "if how == 'message': sys.exit('bye')\n"
        "if how == 'code': sys.exit(7)\n"
        "if how == 'interrupt': raise KeyboardInterrupt\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    for how, code in [("ok", 0), ("raise", 1), ("message", 1), ("code", 7), ("interrupt", -2)]:
        results = []
        for fork_servers in (0, 2):
            (tmp_path / "left-open.txt").unlink(missing_ok=True)
            proc = _spawn(
                [sys.executable, str(script), how], env, tmp_path, fork_servers=fork_servers
            )
            out, err, rc = _communicate(proc)
            results.append((out, err, rc, (tmp_path / "left-open.txt").read_text()))
        fresh, forked = results
        assert forked == fresh, how
        assert forked[2] == code
        assert forked[0].splitlines() == ["thread done", "atexit ran"]
        assert forked[3] == "flushed at exit"
        assert "zygote" not in forked[1]
        if how == "raise":
            assert forked[1].endswith("ValueError: layout changed\n")
            assert forked[1].count('File "') == 1  # the script's frame only


def test_a_failed_sandbox_setup_ends_the_child_with_one_line(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("print('never')\n")
    proc = _spawn([sys.executable, str(script)], {"PATH": "/bin"}, tmp_path / "missing")
    out, err, rc = _communicate(proc)
    assert isinstance(proc, forkserver.ForkedProcess)
    assert (out, rc) == ("", 1)
    assert err.startswith("parseq: could not start the parser:")
    assert "missing" in err


def _server_pid(python: str, uid: int | None = None) -> int:
    return forkserver._servers[python, uid].proc.pid


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root")
def test_the_server_never_holds_a_runs_arguments_or_secrets(tmp_path: Path) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    script = tmp_path / "s.py"
    script.write_text("import os\nprint(len(os.environ['API_KEY']))\n")
    argv = [sys.executable, str(script), "--token", f"arg-{secret}"]
    proc = _spawn(argv, {"PATH": "/bin", "API_KEY": secret}, tmp_path)
    out, err, rc = _communicate(proc)
    assert (out, rc) == (f"{len(secret)}\n", 0), err
    memory = _read_memory(_server_pid(sys.executable))
    assert len(memory) > 1_000_000  # the scan did read the server
    assert b"s3cr3t-" not in memory
    assert secret.encode() not in memory


def _read_memory(pid: int) -> bytes:
    """Every readable mapping of the process ``pid``."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or line.rstrip().endswith("[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except OSError:
                continue
    return b"".join(chunks)


def test_runs_die_with_their_server_and_the_next_run_starts_a_new_one(tmp_path: Path) -> None:
    script = tmp_path / "sleep.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    proc = _spawn([sys.executable, str(script)], {"PATH": "/bin"}, tmp_path)
    assert proc.stdout.readline() == b"up\n"
    server = _server_pid(sys.executable)
    os.kill(server, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    quick = tmp_path / "quick.py"
    quick.write_text("print('again')\n")
    again = _spawn([sys.executable, str(quick)], {"PATH": "/bin"}, tmp_path)
    assert isinstance(again, forkserver.ForkedProcess)
    assert _communicate(again)[:2] == ("again\n", "")
    assert _server_pid(sys.executable) != server


def test_idle_servers_past_the_limit_stop_and_busy_ones_stay(tmp_path: Path) -> None:
    other = tmp_path / "python-b"
    other.symlink_to(sys.executable)  # a second "env": servers are kept per interpreter path
    sleeper = tmp_path / "sleep.py"
    sleeper.write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    quick = tmp_path / "quick.py"
    quick.write_text("print('ok')\n")
    env = {"PATH": "/bin"}
    busy = _spawn([sys.executable, str(sleeper)], env, tmp_path, fork_servers=1)
    assert busy.stdout.readline() == b"up\n"
    first = forkserver._servers[sys.executable, None].proc
    assert (
        _communicate(_spawn([str(other), str(quick)], env, tmp_path, fork_servers=1))[0] == "ok\n"
    )
    assert first.poll() is None  # busy: kept although over the limit
    busy_pgid = busy.pid
    supervisor.kill_group(busy_pgid)
    assert busy.wait(timeout=10) == -signal.SIGKILL
    second = forkserver._servers[str(other), None].proc
    assert (
        _communicate(_spawn([sys.executable, str(quick)], env, tmp_path, fork_servers=1))[0]
        == "ok\n"
    )
    assert second.wait(timeout=10) == 0  # idle and least recently used: stopped
    assert first.poll() is None


def test_a_server_that_cannot_start_falls_back_to_a_fresh_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_python = tmp_path / "not-python"
    not_python.write_text('#!/bin/sh\necho fresh "$@"\n')
    not_python.chmod(0o755)
    caplog.set_level(logging.WARNING, logger="parseq.sandbox.runner")
    proc = _spawn([str(not_python), "script.py"], {"PATH": "/bin"}, tmp_path)
    assert isinstance(proc, subprocess.Popen)
    assert _communicate(proc)[:1] == ("fresh script.py\n",)
    assert re.search(r"fork server for .*not-python.*; starting a fresh interpreter", caplog.text)


def test_supervise_handles_a_forked_run_like_a_fresh_one(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n")
    proc = _spawn([sys.executable, str(script)], {"PATH": "/bin"}, tmp_path)
    outcome = supervisor.supervise(proc, tmp_path / "run.log", timeout_s=20)
    assert (outcome.status, outcome.exit_code, outcome.error) == (RunStatus.ERROR, 3, "err")
    assert sorted((tmp_path / "run.log").read_text().splitlines()) == ["err", "out"]


def test_a_run_that_ends_at_once_is_seen_ending(tmp_path: Path) -> None:
    """The exit report may arrive with the pid: supervise must not wait for it again."""
    script = tmp_path / "s.py"
    script.write_text("")
    for _ in range(20):
        proc = _spawn([sys.executable, str(script)], {"PATH": "/bin"}, tmp_path)
        time.sleep(0.01)
        # A missed exit would run into the timeout.
        outcome = supervisor.supervise(proc, tmp_path / "run.log", timeout_s=3, poll_s=5)
        assert outcome.status is RunStatus.COMPLETED


@pytest.mark.parametrize("fork_servers", [8, 0])
def test_a_worker_forks_runs_from_its_env_server_unless_turned_off(
    make_config: Callable[..., Config], fork_servers: int
) -> None:
    """Two runs of a parser: with fork servers on, both come from one server of its env
    (the runs are its children), each in its own process."""
    with running(make_config(fork_servers=fork_servers)):
        parser = Parser(name="echo", path="echo_env.py")
        db.session.add(parser)
        db.session.commit()
        servers = []
        for _ in range(2):
            run = execution.run_now(parser)
            assert run.status is RunStatus.COMPLETED, run.error
            servers.append(dict(forkserver._servers))
    if fork_servers:
        assert len(servers[0]) == 1 and servers[0] == servers[1]
        ((python, _uid),) = servers[0]
        assert python.endswith("/bin/python")
    else:
        assert servers == [{}, {}]


def test_a_forked_run_as_the_sandbox_user_starts_processes_of_its_own(tmp_path: Path) -> None:
    """Subprocesses and a multiprocessing pool (spawn: new Pythons started with the flags of
    this one) work as in a fresh interpreter, under the sandbox user when we are root."""
    script = tmp_path / "procs.py"
    script.write_text(
        "import multiprocessing, os, subprocess, sys\n"
        "def prefix():\n"
        "    return sys.prefix\n"
        "if __name__ == '__main__':\n"
        "    print(os.getuid(), flush=True)\n"
        "    subprocess.run(['echo', 'sub'])\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        print(pool.apply(prefix) == sys.prefix)\n"
    )
    script.chmod(0o644)
    user = SandboxUser("nobody", 65534, 65534) if os.geteuid() == 0 else None
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = _spawn([PARSER_PYTHON, str(script)], env, tmp_path, user=user)
    assert isinstance(proc, forkserver.ForkedProcess)
    out, err, rc = _communicate(proc)
    assert rc == 0, err
    uid = 65534 if user else os.geteuid()
    assert out.splitlines() == [str(uid), "sub", "True"]


@pytest.mark.parametrize(
    ("name", "source"),
    [("syntax.py", "print('a'\nx = 1\n"), ("missing.py", None), ("indent.py", "if True:\nx = 1\n")],
)
def test_a_script_that_cannot_run_fails_as_with_a_fresh_start(
    tmp_path: Path, name: str, source: str | None
) -> None:
    script = tmp_path / name
    if source is not None:
        script.write_text(source)
    results = []
    for fork_servers in (0, 2):
        proc = _spawn(
            [sys.executable, str(script)], {"PATH": "/bin"}, tmp_path, fork_servers=fork_servers
        )
        assert isinstance(proc, forkserver.ForkedProcess) is bool(fork_servers)
        results.append(_communicate(proc))
    fresh, forked = results
    assert forked == fresh
    assert forked[2] in (1, 2) and "zygote" not in forked[1]


SELF_PROBE = """\
import ctypes, json, os
try:
    with open("/proc/self/environ", "rb") as fh:
        environ = sorted(fh.read().decode().split("\\0")[:-1])
except OSError as exc:
    environ = type(exc).__name__
print(json.dumps({
    "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), "environ": environ,
    "owner": os.stat("/proc/self/environ").st_uid, "uid": os.getuid(),
}))
"""


def test_a_forked_run_is_dumpable_and_reads_its_own_environ_as_a_fresh_one(
    tmp_path: Path,
) -> None:
    """The server is not dumpable; its child must not stay so (its ``/proc/self`` files would
    be root's, core dumps off), as the sandbox user when we are root."""
    script = tmp_path / "self.py"
    script.write_text(SELF_PROBE)
    script.chmod(0o644)
    user = SandboxUser("nobody", 65534, 65534) if os.geteuid() == 0 else None
    env = {"PATH": "/usr/bin:/bin", "TOKEN": "t"}
    seen = []
    for fork_servers in (0, 2):
        proc = _spawn(
            [PARSER_PYTHON, str(script)], env, tmp_path, user=user, fork_servers=fork_servers
        )
        assert isinstance(proc, forkserver.ForkedProcess) is bool(fork_servers)
        out, err, rc = _communicate(proc)
        assert rc == 0, err
        seen.append(json.loads(out))
    fresh, forked = seen
    assert forked["dumpable"] == fresh["dumpable"] == 1
    uid = 65534 if user else os.geteuid()
    assert forked["owner"] == forked["uid"] == uid
    assert "TOKEN=t" in fresh["environ"]
    # Readable, but the kernel's copy is the server's start-up environment (locale only): the
    # run's is in os.environ alone. The README lists this difference.
    assert isinstance(forked["environ"], list)
    assert all(v.startswith(("LANG=", "LC_")) for v in forked["environ"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the user switch needs root")
def test_runs_of_different_sandbox_users_never_share_a_server(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import os\nprint(os.getuid(), os.getppid())\n")
    script.chmod(0o644)
    parents = {}
    for uid in (300_701, 300_702, 300_701):
        user = SandboxUser(f"parseq-{uid}", uid, uid)
        proc = _spawn([PARSER_PYTHON, str(script)], {"PATH": "/bin"}, tmp_path, user=user)
        out, err, rc = _communicate(proc)
        assert rc == 0, err
        run_uid, server = map(int, out.split())
        assert run_uid == uid
        assert parents.setdefault(uid, server) == server == _server_pid(PARSER_PYTHON, uid)
    assert parents[300_701] != parents[300_702]
