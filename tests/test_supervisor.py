"""Supervising real subprocesses, started fresh and forked from a fork server: the log,
the outcome, timeouts, cancellation and the process group."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from parseq.db.models import RunStatus
from parseq.sandbox import forkserver, runner, supervisor


def _run_code(tmp_path: Path, code: str, fork: bool = False, **kwargs: Any) -> supervisor.Outcome:
    """Supervise ``code`` run by a fresh interpreter, or with ``fork`` by a fork server."""
    script = tmp_path / "script.py"
    script.write_text(code)
    proc = runner.spawn(
        [sys.executable, str(script)],
        {"PATH": os.environ["PATH"]},
        tmp_path,
        fork_servers=2 if fork else 0,
    )
    assert isinstance(proc, forkserver.ForkedProcess) is fork
    kwargs.setdefault("timeout_s", 20)
    return supervisor.supervise(proc, tmp_path / "run.log", **kwargs)


#: Both ways a script starts: a fresh interpreter, a fork server's child.
fresh_or_forked = pytest.mark.parametrize("fork", [False, True], ids=["fresh", "fork-server"])


@fresh_or_forked
def test_exit_zero_is_completed_and_both_streams_are_logged(tmp_path: Path, fork: bool) -> None:
    outcome = _run_code(
        tmp_path,
        fork=fork,
        code="import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('out2')\n",
    )
    assert outcome.status is RunStatus.COMPLETED
    assert outcome.exit_code == 0
    assert outcome.error is None
    log = (tmp_path / "run.log").read_text().splitlines()
    assert sorted(log) == ["err", "out", "out2"]


@fresh_or_forked
def test_nonzero_exit_is_error_with_the_stderr_tail(tmp_path: Path, fork: bool) -> None:
    code = (
        "import sys\n"
        "for i in range(500): print(f'noise {i}', file=sys.stderr)\n"
        "print('ValueError: layout changed', file=sys.stderr)\n"
        "sys.exit(4)\n"
    )
    outcome = _run_code(tmp_path, fork=fork, code=code, error_tail_bytes=200)
    assert outcome.status is RunStatus.ERROR
    assert outcome.exit_code == 4
    assert outcome.error.endswith("ValueError: layout changed")
    assert len(outcome.error) <= 200
    assert "noise 0\n" not in outcome.error


@fresh_or_forked
def test_silent_failure_says_the_exit_code(tmp_path: Path, fork: bool) -> None:
    outcome = _run_code(tmp_path, fork=fork, code="raise SystemExit(9)\n")
    assert outcome.error == "exited with code 9"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"  # a zombie is dead, just not yet reaped


def _gone(pid: int, timeout_s: float = 5) -> bool:
    """Whether ``pid`` is dead within ``timeout_s`` (killing a group is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _starting_a_child(tmp_path: Path) -> str:
    """Script lines that start a long sleeper and note its pid in ``child.pid``."""
    return (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(tmp_path / 'child.pid')!r}, 'w').write(str(c.pid))\n"
    )


@fresh_or_forked
def test_timeout_kills_the_whole_process_group(tmp_path: Path, fork: bool) -> None:
    code = _starting_a_child(tmp_path) + "print('started', flush=True)\ntime.sleep(600)\n"
    started = time.monotonic()
    outcome = _run_code(tmp_path, fork=fork, code=code, timeout_s=1.0, kill_grace_s=0.3)
    assert time.monotonic() - started < 10
    assert outcome.status is RunStatus.TIMEOUT
    assert "timed out after 1 s" in outcome.error
    assert _gone(int((tmp_path / "child.pid").read_text()))


@fresh_or_forked
def test_term_ignoring_process_is_killed_after_the_grace(tmp_path: Path, fork: bool) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    outcome = _run_code(tmp_path, fork=fork, code=code, timeout_s=0.5, kill_grace_s=0.3)
    assert outcome.status is RunStatus.TIMEOUT
    assert outcome.exit_code == -9


@fresh_or_forked
def test_children_left_behind_by_a_finished_script_are_killed(tmp_path: Path, fork: bool) -> None:
    outcome = _run_code(tmp_path, fork=fork, code=_starting_a_child(tmp_path))
    assert outcome.status is RunStatus.COMPLETED
    assert _gone(int((tmp_path / "child.pid").read_text()))


@fresh_or_forked
def test_cancel_event_stops_the_run(tmp_path: Path, fork: bool) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    outcome = _run_code(tmp_path, fork=fork, code="import time\ntime.sleep(600)\n", cancel=cancel)
    assert outcome.status is RunStatus.CANCELLED
    assert outcome.duration_s < 5


@fresh_or_forked
def test_log_is_capped_with_a_marker(tmp_path: Path, fork: bool) -> None:
    outcome = _run_code(
        tmp_path, fork=fork, code="for i in range(10000): print('y' * 99)\n", max_log_bytes=5000
    )
    assert outcome.status is RunStatus.COMPLETED
    data = (tmp_path / "run.log").read_bytes()
    assert data.startswith(b"y" * 99 + b"\n")
    assert data.endswith(b"[parseq: log truncated at 5000 bytes]\n")
    assert len(data) < 5100


@fresh_or_forked
def test_line_callback_sees_each_line(tmp_path: Path, fork: bool) -> None:
    seen: list[tuple[str, bytes]] = []
    _run_code(
        tmp_path,
        fork=fork,
        code="import sys\nprint('a')\nprint('b', file=sys.stderr)\n",
        on_line=lambda stream, line: seen.append((stream, line)),
    )
    assert sorted(seen) == [("stderr", b"b\n"), ("stdout", b"a\n")]
