"""The sandbox: pure command/env builders, and real subprocesses under supervision."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from parseq.core.argv import build_command, check_positional
from parseq.core.config import Config
from parseq.core.errors import ValidationError
from parseq.sandbox import forkserver, runner, supervisor
from parseq.sandbox import limits as sandbox

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, []),
        ({"pages": 3}, ["--pages", "3"]),
        ({"city": "Moscow", "dry_run": True}, ["--city", "Moscow", "--dry_run"]),
        ({"verbose": False, "proxy": None, "pages": 2}, ["--pages", "2"]),
        ({"ids": [1, 2]}, ["--ids", "[1, 2]"]),
        ({"query": "a b --c"}, ["--query", "a b --c"]),
        ({"output-folder": "out", "max_pages": 0}, ["--output-folder", "out", "--max_pages", "0"]),
        # lookup.pk's CLI: parse.py -m 20 -r -s search_query
        ({"m": 20, "r": True, "s": "phones"}, ["-m", "20", "-r", "-s", "phones"]),
        ({"q": "x", "v": False}, ["-q", "x"]),
    ],
)
def test_build_command_passes_args_as_a_cli_expects_them(args: dict, expected: list[str]) -> None:
    assert build_command("/venv/bin/python", "/p/x.py", args) == [
        "/venv/bin/python",
        "/p/x.py",
        *expected,
    ]


def test_build_command_puts_positionals_after_the_options() -> None:
    argv = build_command("py", "x.py", {"pages": 2, "v": True}, ["out.csv", 3, "-1"])
    assert argv == ["py", "x.py", "--pages", "2", "-v", "out.csv", "3", "-1"]


@pytest.mark.parametrize("bad", ["a", {"a": 1}, [None], [["x"]], [{"a": 1}], ["a\0b"]])
def test_positionals_must_be_a_list_of_plain_values(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        check_positional(bad)
    assert info.value.field == "positional"


@pytest.mark.parametrize("name", ["", "-x", "a b", "1abc", "a=b", "x" * 65, "--pages"])
def test_build_command_refuses_unsafe_arg_names(name: str) -> None:
    with pytest.raises(ValidationError):
        build_command("py", "x.py", {name: 1})


def _env(**overrides):  # type: ignore[no-untyped-def]
    values = dict(
        base_env={
            "PATH": "/usr/bin",
            "LANG": "C.UTF-8",
            "LC_CTYPE": "C.UTF-8",
            "PARSEQ_DATABASE_URL": "postgresql://secret@db/parseq",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t",
            "HOME": "/root",
        },
        run_id=7,
        parser="quotes",
        args={"pages": 2},
        secrets={"API_TOKEN": "tok"},
        output_dir=Path("/r/7/output"),
        state_dir=Path("/s/quotes"),
        home_dir=Path("/r/7/home"),
        tmp_dir=Path("/r/7/tmp"),
    )
    values.update(overrides)
    return runner.build_env(**values)


def test_build_env_gives_the_contract_and_nothing_of_parseq() -> None:
    env = _env()
    assert env == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_CTYPE": "C.UTF-8",
        "HOME": "/r/7/home",
        "TMPDIR": "/r/7/tmp",
        "TMP": "/r/7/tmp",
        "TEMP": "/r/7/tmp",
        "PYTHONUNBUFFERED": "1",
        "PARSEQ_RUN_ID": "7",
        "PARSEQ_PARSER": "quotes",
        "PARSEQ_ARGS": json.dumps({"pages": 2}),
        "PARSEQ_POSITIONAL": "[]",
        "PARSEQ_OUTPUT_DIR": "/r/7/output",
        "PARSEQ_STATE_DIR": "/s/quotes",
        "PARSEQ_SECRET_NAMES": "API_TOKEN",
        "API_TOKEN": "tok",
    }


def test_build_env_does_not_change_its_input() -> None:
    base = {"PATH": "/bin"}
    runner.build_env(
        base_env=base,
        run_id=1,
        parser="p",
        args={},
        secrets={},
        output_dir=Path("/o"),
        state_dir=Path("/s"),
        home_dir=Path("/h"),
        tmp_dir=Path("/t"),
    )
    assert base == {"PATH": "/bin"}


@pytest.mark.parametrize("name", ["PATH", "HOME", "PARSEQ_RUN_ID", "parseq_x", "1X", "A-B", ""])
def test_build_env_refuses_secret_names_that_shadow_the_contract(name: str) -> None:
    with pytest.raises(ValidationError):
        _env(secrets={name: "v"})


# --- spawn: real subprocesses --------------------------------------------------------------


@pytest.fixture(
    params=["auto", None, "fork-server"], ids=["prlimit-setpriv", "preexec_fn", "fork-server"]
)
def launcher(request: pytest.FixtureRequest) -> str | None:
    """The three ways of applying the sandbox: the prlimit/setpriv prefix, a preexec_fn, and
    a fork server's child setting it up itself."""
    if request.param == "auto" and runner.default_launcher() is None:
        pytest.skip("prlimit/setpriv are not installed")
    return request.param


def _spawn_with(launcher: str | None, argv: list[str], **kwargs: Any) -> supervisor.Process:
    if launcher == "fork-server":
        proc = runner.spawn(argv, launcher=None, fork_servers=2, **kwargs)
        assert isinstance(proc, forkserver.ForkedProcess)
        return proc
    return runner.spawn(argv, launcher=launcher, **kwargs)  # type: ignore[arg-type]


PROBE_IDENTITY = (
    "import json, os, resource\n"
    "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),\n"
    "    'nofile': resource.getrlimit(resource.RLIMIT_NOFILE),\n"
    "    'cpu': resource.getrlimit(resource.RLIMIT_CPU), 'sid': os.getsid(0) == os.getpid()}))\n"
)


def test_spawn_applies_limits_and_user_with_either_launcher(
    tmp_path: Path, launcher: str | None
) -> None:
    tmp_path.chmod(0o755)
    script = tmp_path / "probe.py"
    script.write_text(PROBE_IDENTITY)
    user = sandbox.SandboxUser("nobody", 65534, 65534) if os.geteuid() == 0 else None
    limits = [(resource.RLIMIT_NOFILE, 77, 77), (resource.RLIMIT_CPU, 30, 35)]
    python = sandbox.parser_python(Config())  # one the sandbox user can run
    proc = _spawn_with(
        launcher,
        [python, str(script)],
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
        limits=limits,
        user=user,
    )
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(timeout=20) == 0, err
    seen = json.loads(out)
    assert seen["nofile"] == [77, 77]
    assert seen["cpu"] == [30, 35]
    assert seen["sid"] is True  # its own session, so its own process group
    if user is not None:
        assert (seen["uid"], seen["gid"], seen["groups"]) == (65534, 65534, [])


def test_the_child_dies_with_the_process_that_spawned_it(
    tmp_path: Path, launcher: str | None
) -> None:
    """A SIGKILLed worker takes its parsers along (parent-death signal); with a fork server,
    the server sees its control socket close and exits, and its children die with it."""
    sleeper = tmp_path / "sleep.py"
    sleeper.write_text("import time\ntime.sleep(60)\n")
    forked = launcher == "fork-server"
    middle = (
        "import os, sys, time\n"
        "from parseq.sandbox import runner\n"
        f"proc = runner.spawn([sys.executable, {str(sleeper)!r}], {{'PATH': '/usr/bin:/bin'}}, "
        f"'/', launcher={None if forked else launcher!r}, fork_servers={2 if forked else 0})\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(0.5)\n"  # the script is running (setpriv has exec'd it)
        "os.kill(os.getpid(), 9)\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", middle], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    child = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 5
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait for init to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
