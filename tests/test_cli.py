"""The ``parseq`` command, run as a user would: as a subprocess."""

from __future__ import annotations

import fcntl
import http.cookiejar
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import FIXTURE_PARSERS, INSTALLER_ENV, PARSER_PYTHON, csrf_from, free_port

REPO = Path(__file__).resolve().parent.parent


def _parseq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "parseq.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **INSTALLER_ENV,  # the start-up sync locks shipped parsers' requirements (an index)
        "PATH": os.environ["PATH"],
        "PARSEQ_VAR_DIR": str(tmp_path / "var"),
        "PARSEQ_ENVS_DIR": str(tmp_path / "envs"),
        "PARSEQ_LOG_LEVEL": "WARNING",
        "PARSEQ_PYTHON": PARSER_PYTHON,
        **extra,
    }


def test_run_command_runs_the_pi_demo_and_says_where_output_went(tmp_path: Path) -> None:
    result = _parseq("run", "pi", "--arg", "digits=20", env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "run 1 of pi: completed" in result.stdout
    stored = tmp_path / "var" / "storage" / "runs" / "1" / "output.txt"
    assert f"output.txt (23 bytes) -> {stored.as_uri()}" in result.stdout
    assert stored.read_text() == "3.14159265358979323846\n"


def test_run_command_failures_exit_nonzero_with_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, PARSEQ_PARSERS_DIR=str(FIXTURE_PARSERS))
    failed = _parseq("run", "fail", env=env)
    assert failed.returncode == 1
    assert "run 1 of fail: error" in failed.stdout
    assert "ValueError: the site changed its layout" in failed.stderr

    unknown = _parseq("run", "nope", env=env)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "parseq: error: no parser named 'nope'"

    bad_arg = _parseq("run", "fail", "--arg", "novalue", env=env)
    assert bad_arg.returncode == 2
    assert "is not of the form key=value" in bad_arg.stderr


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    result = _parseq("init-db", env=_env(tmp_path, PARSEQ_BROKER_URL="kafka://x"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("parseq: error: PARSEQ_BROKER_URL scheme 'kafka'")


def _get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_up_serves_admin_and_api_and_completes_the_demo_run(tmp_path: Path) -> None:
    created = _parseq("create-token", "up-test", env=_env(tmp_path))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "parseq.cli", "up", "--port", str(port)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first_line = proc.stdout.readline()
        assert f"admin http://127.0.0.1:{port}/admin/" in first_line
        lines = [proc.stdout.readline() for _ in range(3)]
        # First start: the admin user gets a random password, printed this once.
        password = re.search(r"admin login: user 'admin', password (\S+)", lines[2]).group(1)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            runs = _get(f"{base}/api/v1/runs", token)["runs"]
            if (runs and runs[0]["status"] == "completed") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert runs[0]["parser"] == "pi"
        assert runs[0]["status"] == "completed"
        output = urllib.request.Request(
            f"{base}/api/v1/runs/{runs[0]['id']}/files/output.txt",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(output) as r:
            assert r.read().startswith(b"3.14159265358979")
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        with opener.open(f"{base}/admin/runs/") as r:
            assert r.url.startswith(f"{base}/admin/login/")  # the admin needs a login
            token = csrf_from(r.read())
        login = urllib.parse.urlencode(
            {"username": "admin", "password": password, "csrf_token": token}
        ).encode()
        with opener.open(f"{base}/admin/login/?next=/admin/runs/", data=login) as r:
            page = r.read().decode()
        assert r.status == 200 and r.url == f"{base}/admin/runs/"
        assert "status-completed" in page
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    assert proc.returncode == 0


def test_up_takes_the_admin_password_from_the_environment_and_prints_none(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "parseq.cli", "up", "--port", str(port)],
        env=_env(tmp_path, PARSEQ_ADMIN_PASSWORD="from-the-env-123"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "Parseq is up" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert "admin login" not in out and "from-the-env-123" not in out
    check = _parseq(
        "create-user", "admin", "--password", "another-pass", env=_env(tmp_path), timeout=30
    )
    assert check.returncode == 1
    assert check.stderr.strip() == "parseq: error: user 'admin' already exists"


def _pipe_bytes(fd: int) -> int:
    """How many bytes wait unread in the pipe ``fd``."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4), sys.byteorder)


def _read_to_eof(fd: int, timeout_s: float) -> str:
    data, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return data.decode(errors="replace")
            data += chunk
    raise AssertionError(f"the process did not exit; its output so far: {data[-500:]!r}")


def test_up_stops_on_a_sigint_that_comes_right_after_it_says_it_is_up(tmp_path: Path) -> None:
    """A Ctrl+C just after "Parseq is up" stops it. It used to arrive before the handlers were
    installed, raise KeyboardInterrupt past the shutdown and leave the server running. To hit
    that moment every time, stdout is a one-page pipe filled so that exactly the first line
    fits: ``up`` blocks writing the next one, and the signal comes while it does."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = f"Parseq is up: admin {url}/admin/  API {url}/api/v1/parsers  (Ctrl+C stops)\n"
    read_fd, write_fd = os.pipe()
    size = fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    os.write(write_fd, b"x" * (size - len(first.encode())))
    with (tmp_path / "up.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parseq.cli", "up", "--port", str(port)],
            env=_env(tmp_path),
            stdout=write_fd,
            stderr=log,
        )
    os.close(write_fd)
    try:
        deadline = time.monotonic() + 60
        while _pipe_bytes(read_fd) < size:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "up never said it was up"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out = _read_to_eof(read_fd, timeout_s=30)
        proc.wait(timeout=15)
    finally:
        os.close(read_fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first + "  database " in out
    assert out.endswith("stopping...\n")
    assert proc.returncode == 0, (tmp_path / "up.log").read_text()


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    """click's usage block (Usage, Try, Error) is one ``parseq: error:`` line, exit 2."""
    cases = {
        ("run", "pi", "--arg", "digits"): "Invalid value for '--arg': 'digits' is not of the "
        "form key=value (see 'python -m parseq.cli run --help')",
        ("create-token",): "Missing argument 'NAME' (see 'python -m parseq.cli create-token "
        "--help')",
        ("up", "--port", "abc"): "Invalid value for '--port': 'abc' is not a valid integer "
        "(see 'python -m parseq.cli up --help')",
        ("db", "upgrade", "--bogus"): "No such option '--bogus' (see 'python -m parseq.cli db "
        "upgrade --help')",
        ("envs", "prune", "--max-count", "x"): "Invalid value for '--max-count': 'x' is not a "
        "valid integer (see 'python -m parseq.cli envs prune --help')",
        ("frobnicate",): "No such command 'frobnicate' (see 'python -m parseq.cli --help')",
    }
    for args, message in cases.items():
        result = _parseq(*args, env=_env(tmp_path))
        assert (result.returncode, result.stdout) == (2, ""), args
        assert result.stderr == f"parseq: error: {message}\n"
    assert not (tmp_path / "var" / "parseq.db").exists()  # refused before doing anything
    helped = _parseq("db", env=_env(tmp_path))  # a group alone still shows its help
    assert "Commands:" in helped.stdout + helped.stderr


def test_migration_logs_are_quiet_unless_verbose(tmp_path: Path) -> None:
    env = _env(tmp_path, PARSEQ_LOG_LEVEL="INFO")
    quiet = _parseq("create-token", "a", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "alembic" not in quiet.stderr
    assert quiet.stderr.endswith("token 'a' created; it is not shown again\n")
    loud = _parseq("-v", "create-token", "b", env=env)
    assert loud.returncode == 0, loud.stderr
    assert "INFO alembic.runtime.migration: Context impl SQLiteImpl." in loud.stderr


def test_init_db_creates_the_admin_once(tmp_path: Path) -> None:
    first = _parseq("init-db", env=_env(tmp_path))
    assert first.returncode == 0, first.stderr
    assert re.search(r"admin login: user 'admin', password \S{12,}", first.stdout)
    again = _parseq("init-db", env=_env(tmp_path))
    assert again.returncode == 0 and "admin login" not in again.stdout


def test_create_user_command(tmp_path: Path) -> None:
    env = _env(tmp_path)
    made = _parseq("create-user", "alice", "--password", "long-enough-pw", env=env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "user 'alice' created"

    short = _parseq("create-user", "bob", "--password", "short", env=env)
    assert short.returncode == 1
    assert short.stderr.strip() == "parseq: error: password must be at least 8 characters"

    prompted = subprocess.run(
        [sys.executable, "-m", "parseq.cli", "create-user", "carol"],
        env=env,
        input="typed-password\ntyped-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert prompted.returncode == 0, prompted.stderr
    assert "typed-password" not in prompted.stdout

    reset = _parseq("create-user", "alice", "--reset", "--password", "new-password!", env=env)
    assert reset.returncode == 0 and "password of user 'alice' changed" in reset.stdout
    missing = _parseq("create-user", "zed", "--reset", "--password", "whatever-pw", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "parseq: error: no user named 'zed'"
