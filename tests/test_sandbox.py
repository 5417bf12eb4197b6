"""The sandbox: limits and the unprivileged user (pure parts), what a parser cannot touch, and
every bad input of the README's table run through a real worker, which survives each."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import PROJECT_ROOT, Config
from parseq.core.errors import ConfigError, ValidationError
from parseq.db.models import Parser, ParserKind, Run, RunStatus, db
from parseq.sandbox import limits as sandbox
from parseq.sandbox import runner
from parseq.sandbox.supervisor import LOG_TRUNCATED_MARKER
from parseq.services import runs
from parseq.services.registry import validate_path
from tests.conftest import add_parser, api_client, running, wait_for_run

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the user switch needs root")


# --- pure parts ------------------------------------------------------------------------------


def test_build_limits_takes_the_parsers_own_and_the_defaults_elsewhere() -> None:
    config = Config(max_memory_bytes=1000, max_cpu_s=60, max_processes=10, max_open_files=64)
    parser = Parser(name="p", path="p.py", max_memory_bytes=500, max_processes=0)
    assert sandbox.build_limits(parser, config) == sandbox.Limits(
        memory_bytes=500, cpu_s=60.0, processes=0, file_bytes=config.max_file_bytes, open_files=64
    )


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (sandbox.Limits(0, 0, 0, 0, 0), []),
        (sandbox.Limits(2**30, 0, 0, 0, 0), [(resource.RLIMIT_AS, 2**30, 2**30)]),
        (sandbox.Limits(0, 2.5, 0, 0, 0), [(resource.RLIMIT_CPU, 3, 8)]),
        (
            sandbox.Limits(0, 0, 64, 10**6, 256),
            [
                (resource.RLIMIT_NPROC, 64, 64),
                (resource.RLIMIT_FSIZE, 10**6, 10**6),
                (resource.RLIMIT_NOFILE, 256, 256),
            ],
        ),
    ],
)
def test_rlimits_maps_limits_to_setrlimit_calls(
    limits: sandbox.Limits, expected: list[sandbox.RLimit]
) -> None:
    assert sandbox.rlimits(limits) == expected


def test_clamp_rlimits_never_raises_a_limit_above_the_current_hard_one() -> None:
    current = {resource.RLIMIT_NOFILE: (1024, 4096), resource.RLIMIT_AS: (-1, -1)}
    wanted = [(resource.RLIMIT_NOFILE, 8192, 8192), (resource.RLIMIT_AS, 2**30, 2**30)]
    assert sandbox.clamp_rlimits(wanted, current.__getitem__) == [
        (resource.RLIMIT_NOFILE, 4096, 4096),
        (resource.RLIMIT_AS, 2**30, 2**30),
    ]


def test_launcher_argv_sets_the_limits_then_the_user_and_the_parent_death_signal() -> None:
    launcher = runner.Launcher("/usr/bin/prlimit", "/usr/bin/setpriv")
    limits = [(resource.RLIMIT_CPU, 61, 66), (resource.RLIMIT_NOFILE, 256, resource.RLIM_INFINITY)]
    nobody = sandbox.SandboxUser("nobody", 65534, 65533)
    assert runner.launcher_argv(launcher, limits, nobody) == [
        "/usr/bin/prlimit",
        "--cpu=61:66",
        "--nofile=256:unlimited",
        "--",
        "/usr/bin/setpriv",
        "--reuid=65534",
        "--regid=65533",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--pdeathsig=KILL",
        "--",
    ]
    assert runner.launcher_argv(launcher, [], None) == [
        "/usr/bin/prlimit",
        "--",
        "/usr/bin/setpriv",
        "--pdeathsig=KILL",
        "--",
    ]


def test_find_launcher_needs_both_tools(tmp_path: Path) -> None:
    (tmp_path / "prlimit").write_text("#!/bin/sh\n")
    (tmp_path / "prlimit").chmod(0o755)
    assert runner.find_launcher((str(tmp_path),)) is None
    (tmp_path / "setpriv").write_text("#!/bin/sh\n")
    (tmp_path / "setpriv").chmod(0o755)
    assert runner.find_launcher((str(tmp_path),)) == runner.Launcher(
        f"{tmp_path}/prlimit", f"{tmp_path}/setpriv"
    )


@pytest.mark.parametrize(
    ("setting", "euid", "expected"),
    [("nobody", 0, "nobody"), ("nobody", 1000, None), ("none", 0, None), ("", 0, None)],
)
def test_sandbox_user_only_when_root_and_not_turned_off(
    setting: str, euid: int, expected: str | None
) -> None:
    user = sandbox.sandbox_user(Config(run_as_user=setting), euid=euid)
    assert (user.name if user else None) == expected


@pytest.mark.parametrize("setting", ["no-such-user-xyz", "root", "0"])
def test_sandbox_user_refuses_unknown_users_and_root(setting: str) -> None:
    with pytest.raises(ConfigError):
        sandbox.sandbox_user(Config(run_as_user=setting), euid=0)


def test_run_as_uid_base_gives_each_parser_a_uid_of_its_own() -> None:
    config = Config(run_as_uid_base=200_000)
    user = sandbox.sandbox_user(config, euid=0, parser_id=7)
    assert user == sandbox.SandboxUser("parseq-7", 200_007, 200_007)
    assert sandbox.sandbox_user(config, euid=1000, parser_id=7) is None  # not root: no switch
    assert sandbox.sandbox_user(config, euid=0).name == "nobody"  # no parser: the shared one


@pytest.mark.parametrize("base", [-1, 1000, 2**31])
def test_run_as_uid_base_out_of_range_is_refused(base: int) -> None:
    with pytest.raises(ConfigError, match="PARSEQ_RUN_AS_UID_BASE"):
        Config(run_as_uid_base=base).resolved()


def test_check_reachable_names_the_folder_in_the_way(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "python").write_text("")
    nobody = sandbox.SandboxUser("nobody", 65534, 65534)
    with pytest.raises(ConfigError, match=f"{hidden} is mode 700"):
        sandbox.check_reachable(nobody, hidden / "python")
    hidden.chmod(0o711)
    sandbox.check_reachable(nobody, hidden / "python", need=0o4)


# --- real runs through a worker --------------------------------------------------------------

SCRIPTS = {
    "ok.py": (
        "import os, pathlib\n"
        "pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'], 'output.txt').write_text('fine\\n')\n"
    ),
    "probe.py": (
        "import json, os, pathlib\n"
        "report = {'uid': os.getuid()}\n"
        "for name, path in json.loads(os.environ['PARSEQ_ARGS'])['targets'].items():\n"
        "    try:\n"
        "        with open(path, 'ab') as fh:\n"
        "            fh.write(b'owned')\n"
        "        report[name] = 'written'\n"
        "    except OSError as exc:\n"
        "        report[name] = type(exc).__name__\n"
        "pathlib.Path(os.environ['PARSEQ_STATE_DIR'], 'mine.txt').write_text('kept')\n"
        "out = pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'], 'report.json')\n"
        "out.write_text(json.dumps(report))\n"
    ),
    "holder.py": (
        "import os, pathlib, time\n"
        "state = pathlib.Path(os.environ['PARSEQ_STATE_DIR'])\n"
        "(state / 'secret.txt').write_text('mine')\n"
        "(state / 'ready').write_text(str(os.getuid()))\n"
        "time.sleep(30)\n"  # until cancelled
    ),
    "binary.py": (
        "import sys\n"
        "sys.stdout.buffer.write(bytes(range(256)) * 4 + b'\\xff\\xfe\\x00 not utf-8\\n')\n"
        "sys.stderr.buffer.write(b'bad \\x00\\xff\\xc3( bytes\\n')\n"
        "sys.exit(1)\n"
    ),
    "huge_stdout.py": (
        "import sys\n"
        "chunk = b'x' * (1 << 20)\n"  # no newline anywhere: one 256 MB "line"
        "for _ in range(256):\n"
        "    sys.stdout.buffer.write(chunk)\n"
    ),
    "huge_file.py": (
        "import os, pathlib\n"
        "out = pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'])\n"
        "(out / 'output.txt').write_text('partial results\\n')\n"
        "with open(out / 'big.bin', 'wb') as fh:\n"
        "    for _ in range(1024):\n"
        "        fh.write(b'x' * (1 << 20))\n"  # 1 GB, if the file size limit allowed it
    ),
    "fork_bomb.py": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    ),
    "memory_hog.py": "hog = bytearray(2 * 1024**3)\n",
    "endless.py": "while True:\n    pass\n",
    "close_stdout.py": (
        "import os, pathlib, time\n"
        "print('bye', flush=True)\n"
        "os.close(1)\n"
        "os.close(2)\n"
        "time.sleep(0.3)\n"
        "pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'], 'output.txt').write_text('done\\n')\n"
    ),
    "ignore_term.py": (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        "time.sleep(600)\n"
    ),
    "many_files.py": "fhs = [open(__file__) for _ in range(200)]\n",
}


@pytest.fixture
def parsers_dir(tmp_path: Path) -> Path:
    root = tmp_path / "parsers"
    root.mkdir()
    for name, code in SCRIPTS.items():
        (root / name).write_text(code)
    return root


@pytest.fixture
def app(make_config: Callable[..., Config], parsers_dir: Path) -> Iterator[Flask]:
    """The embedded mode (SQLite, in-process broker, worker threads) with small limits."""
    config = make_config(
        parsers_dir=parsers_dir,
        max_log_bytes=64 * 1024,
        max_file_bytes=1024 * 1024,
        max_processes=24,
        max_open_files=64,
        default_timeout_s=20.0,
        kill_grace_s=0.3,
    )
    with running(config) as app:
        yield app


def _run(name: str, path: str, args: dict | None = None, **fields: object) -> Run:
    parser = db.session.execute(db.select(Parser).filter_by(name=name)).scalar_one_or_none()
    parser = parser or add_parser(name, path, **fields)
    return wait_for_run(runs.create_run(parser, args).id, timeout_s=40)


def _log(app: Flask, run: Run) -> bytes:
    storage = app.extensions["parseq"].storage
    return b"".join(storage.iter_bytes(run.file("run.log").storage_key))


def _next_run_completes() -> None:
    run = _run("ok", "ok.py")
    assert run.status is RunStatus.COMPLETED, run.error


@as_root
def test_parser_runs_unprivileged_and_cannot_write_the_database_code_or_other_state(
    app: Flask,
) -> None:
    config = app.extensions["parseq"].config
    other = _run("other", "probe.py", {"targets": {}})
    assert other.status is RunStatus.COMPLETED
    other_state = config.state_dir / str(other.parser_id) / "mine.txt"
    assert other_state.read_text() == "kept"
    targets = {
        "database": config.database_url.split(":///", 1)[1],
        "code": str(PROJECT_ROOT / "parseq" / "__init__.py"),
        "other_state": str(other_state),
        "other_state_new": str(other_state.parent / "planted.txt"),
        "storage": str(config.var_dir / "storage" / "planted.txt"),
    }
    run = _run("probe", "probe.py", {"targets": targets})
    assert run.status is RunStatus.COMPLETED, run.error
    storage = app.extensions["parseq"].storage
    report = json.loads(b"".join(storage.iter_bytes(run.file("report.json").storage_key)))
    assert report["uid"] == 65534
    assert {k: report[k] for k in targets} == dict.fromkeys(targets, "PermissionError")
    assert other_state.read_text() == "kept"
    # Its own state persists, and is root's again between runs.
    own_state = config.state_dir / str(run.parser_id)
    assert (own_state / "mine.txt").read_text() == "kept"
    assert own_state.stat().st_uid == 0
    assert oct(own_state.stat().st_mode & 0o777) == "0o700"
    assert oct(Path(targets["database"]).stat().st_mode & 0o777) == "0o600"


@as_root
def test_with_uids_of_their_own_parsers_running_together_cannot_reach_each_others_state(
    make_config: Callable[..., Config], parsers_dir: Path
) -> None:
    """Under one shared user, a parser could open the state of another one running at the
    same moment; with ``run_as_uid_base`` each has its own uid and its folders are 0700."""
    with running(make_config(parsers_dir=parsers_dir, run_as_uid_base=300_000)) as app:
        config = app.extensions["parseq"].config
        holder = add_parser("holder", "holder.py")
        held = runs.create_run(holder)
        ready = config.state_dir / str(holder.id) / "ready"
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.read_text() == str(300_000 + holder.id)
        target = str(config.state_dir / str(holder.id) / "secret.txt")
        probe = _run("prober", "probe.py", {"targets": {"holders_state": target}})
        assert probe.status is RunStatus.COMPLETED, probe.error
        storage = app.extensions["parseq"].storage
        report = json.loads(b"".join(storage.iter_bytes(probe.file("report.json").storage_key)))
        assert report["uid"] == 300_000 + probe.parser_id
        assert report["holders_state"] == "PermissionError"
        db.session.expire_all()
        assert db.session.get(Run, held.id).status is RunStatus.RUNNING  # at the same moment
        runs.cancel_run(db.session.get(Run, held.id))
        assert wait_for_run(held.id).status is RunStatus.CANCELLED


@as_root
def test_the_state_folder_goes_back_to_root_when_the_last_run_of_its_parser_on_the_machine_ends(
    tmp_path: Path,
) -> None:
    user = sandbox.SandboxUser("parser", 300_007, 300_007)
    state = tmp_path / "state" / "7"
    state.mkdir(parents=True)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    sandbox.prepare_dirs(user, [first], state, run_id=1)
    sandbox.prepare_dirs(user, [second], state, run_id=2)  # the same parser, at the same time
    assert state.stat().st_uid == user.uid
    sandbox.release_state(state, run_id=1)
    assert state.stat().st_uid == user.uid  # run 2 still uses it
    sandbox.release_state(state, run_id=2)
    assert state.stat().st_uid == 0
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    sandbox.release_state(state, run_id=2)  # a second release changes nothing
    assert state.stat().st_uid == 0


@as_root
def test_a_dead_workers_runs_do_not_keep_the_state_folder_handed_over(tmp_path: Path) -> None:
    user = sandbox.SandboxUser("parser", 300_007, 300_007)
    state = tmp_path / "state" / "7"
    state.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names no process now
    sandbox.prepare_dirs(user, [work], state, run_id=1)
    # As a worker SIGKILLed mid-run leaves it: its run is noted and never released.
    runs_file = state.parent / ".7.runs"
    runs_file.write_text(runs_file.read_text() + f"{dead.pid} 2\n")
    sandbox.release_state(state, run_id=1)
    assert state.stat().st_uid == 0
    assert runs_file.read_text() == ""


def test_script_path_escaping_the_parsers_root_is_refused(app: Flask) -> None:
    config = app.extensions["parseq"].config
    for path in ("../conftest.py", "/etc/passwd.py", "a/../../x.py"):
        with pytest.raises(ValidationError):
            validate_path(config, ParserKind.SCRIPT, path)
    run = _run("escape", "../../conftest.py", max_retries=3)
    assert run.status is RunStatus.ERROR
    assert "leads outside" in run.error
    assert len(runs.get_parser("escape").runs) == 1  # a wrong path is not retried
    _next_run_completes()


def test_symlink_escaping_the_parsers_root_is_refused(app: Flask, tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("print('escaped')\n")
    config = app.extensions["parseq"].config
    (config.parsers_dir / "link.py").symlink_to(outside)
    with pytest.raises(ValidationError, match="outside"):
        validate_path(config, ParserKind.SCRIPT, "link.py")
    run = _run("link", "link.py")
    assert run.status is RunStatus.ERROR
    assert "leads outside" in run.error
    _next_run_completes()


def test_non_utf8_and_binary_output_is_stored_as_is_and_the_error_stays_text(app: Flask) -> None:
    run = _run("binary", "binary.py")
    assert (run.status, run.exit_code) == (RunStatus.ERROR, 1)
    assert "\x00" not in run.error
    assert run.error.startswith("bad ") and run.error.endswith("bytes")
    log = _log(app, run)
    assert bytes(range(256)) in log
    assert b"bad \x00\xff\xc3( bytes" in log
    _next_run_completes()


def test_huge_stdout_is_cut_at_the_log_cap_and_the_run_still_completes(app: Flask) -> None:
    run = _run("huge-stdout", "huge_stdout.py")
    assert run.status is RunStatus.COMPLETED, run.error
    log = _log(app, run)
    assert log.endswith(LOG_TRUNCATED_MARKER % (64 * 1024))
    assert len(log) == 64 * 1024 + len(LOG_TRUNCATED_MARKER % (64 * 1024))
    _next_run_completes()


def test_a_1_gb_file_stops_at_the_file_size_limit(app: Flask) -> None:
    run = _run("huge-file", "huge_file.py")
    assert run.status is RunStatus.ERROR
    assert "File too large" in run.error
    assert run.file("big.bin").size == 1024 * 1024
    assert run.file("output.txt").size == len("partial results\n")
    _next_run_completes()


@as_root  # RLIMIT_NPROC does not bind root
def test_fork_bomb_is_bounded_by_max_processes_and_killed_at_the_timeout(app: Flask) -> None:
    run = _run("fork-bomb", "fork_bomb.py", timeout_s=2.0)
    assert run.status is RunStatus.TIMEOUT
    assert "process group killed" in run.error
    _next_run_completes()


def test_memory_hog_gets_a_memory_error(app: Flask) -> None:
    run = _run("memory-hog", "memory_hog.py", max_memory_bytes=512 * 1024**2)
    assert run.status is RunStatus.ERROR
    assert "MemoryError" in run.error
    _next_run_completes()


def test_endless_loop_times_out(app: Flask) -> None:
    run = _run("endless", "endless.py", timeout_s=1.0)
    assert run.status is RunStatus.TIMEOUT
    assert "timed out after 1 s" in run.error
    _next_run_completes()


def test_endless_loop_hits_the_cpu_limit_before_a_long_timeout(app: Flask) -> None:
    run = _run("cpu-bound", "endless.py", max_cpu_s=1.0, timeout_s=30.0)
    assert run.status is RunStatus.ERROR
    assert run.error.startswith("CPU time limit exceeded")
    _next_run_completes()


def test_script_that_closes_stdout_still_ends_properly(app: Flask) -> None:
    run = _run("close-stdout", "close_stdout.py")
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.file("output.txt").size == len("done\n")
    assert _log(app, run) == b"bye\n"
    _next_run_completes()


def test_script_ignoring_sigterm_is_killed_after_the_grace(app: Flask) -> None:
    run = _run("ignore-term", "ignore_term.py", timeout_s=1.0)
    assert (run.status, run.exit_code) == (RunStatus.TIMEOUT, -9)
    _next_run_completes()


def test_too_many_open_files_is_an_error(app: Flask) -> None:
    run = _run("many-files", "many_files.py")
    assert run.status is RunStatus.ERROR
    assert "Too many open files" in run.error
    _next_run_completes()


def test_huge_args_json_is_refused_before_a_run_exists(app: Flask) -> None:
    add_parser("ok", "ok.py")
    client = api_client(app)
    resp = client.post("/api/v1/parsers/ok/runs", json={"args": {"blob": "x" * 1_000_000}})
    assert resp.status_code == 422
    assert resp.json["error"]["code"] == "validation_error"
    assert "PARSEQ_MAX_ARGS_BYTES" in resp.json["error"]["message"]
    assert db.session.execute(db.select(Run)).first() is None
    _next_run_completes()


@pytest.mark.parametrize(
    "body", [{"args": {}, "priority": 1}, {"arguments": {"a": 1}}, {"args": [1, 2]}]
)
def test_unknown_fields_and_wrong_types_are_a_400(app: Flask, body: dict) -> None:
    add_parser("ok", "ok.py")
    resp = api_client(app).post("/api/v1/parsers/ok/runs", json=body)
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "bad_request"
    _next_run_completes()


@pytest.mark.services
def test_binary_stderr_is_recorded_on_postgresql(services_app: Flask, worker_process) -> None:  # type: ignore[no-untyped-def]
    import uuid

    with services_app.app_context():
        parser = add_parser(f"binary-{uuid.uuid4().hex[:8]}", "binary_output.py")
        run = wait_for_run(runs.create_run(parser).id)
        assert (run.status, run.exit_code) == (RunStatus.ERROR, 1)  # PostgreSQL refuses NUL
        assert run.error == "bad \ufffd\ufffd\ufffd( bytes"
        assert worker_process.poll() is None
