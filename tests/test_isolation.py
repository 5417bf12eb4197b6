"""A parser against Parseq's own processes, and against the end of its run: whatever user the
worker runs as (root, or started non-root with ``setpriv``, with or without the capabilities to
switch users), a parser finds none of the worker's keys in any process's environment or command
line, cannot open the worker's memory or key files, and leaves no process behind (a new session,
a double fork), started fresh or forked from a fork server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from parseq.core.config import Config
from parseq.core.errors import ConfigError
from parseq.db.models import RunStatus
from parseq.sandbox import forkserver, procs, runner, supervisor
from parseq.sandbox import limits as sandbox
from parseq.sandbox.limits import SandboxUser
from tests.conftest import PARSER_PYTHON, traversable

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="starting a non-root worker needs root")

#: The uid the non-root worker runs as (no passwd entry needed), and its capabilities.
WORKER_UID = 300_500
SWITCH_CAPS = ",".join(f"+{name}" for name in procs.SWITCH_CAPS)

PROBE = """\
import ctypes, json, os, pathlib
args = json.loads(os.environ["PARSEQ_ARGS"])
me, texts = os.getpid(), []
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) != me:
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{entry}/{name}", "rb") as fh:
                    texts.append(fh.read().decode("latin-1"))
            except OSError:
                pass
ancestors, pid = {}, os.getppid()
while pid > 1:
    seen = {}
    for name in ("environ", "mem"):
        try:
            with open(f"/proc/{pid}/{name}", "rb"):
                seen[name] = "opened"
        except OSError as exc:
            seen[name] = type(exc).__name__
    ancestors[pid] = seen
    with open(f"/proc/{pid}/status") as fh:
        pid = int(fh.read().split("PPid:")[1].split()[0])
var = pathlib.Path(args["var"])
files = {}
for name in ("secrets_key", "secret_key", "parseq.db"):
    try:
        files[name] = len((var / name).read_bytes()) and "read"
    except OSError as exc:
        files[name] = type(exc).__name__
try:
    files["var/"] = sorted(os.listdir(var)) and "listed"
except OSError as exc:
    files["var/"] = type(exc).__name__
status = pathlib.Path("/proc/self/status").read_text()
report = {
    "uid": os.getuid(), "texts": texts, "ancestors": ancestors, "files": files,
    "cap_eff": int(status.split("CapEff:")[1].split()[0], 16),
    "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),
}
pathlib.Path(os.environ["PARSEQ_OUTPUT_DIR"], "report.json").write_text(json.dumps(report))
"""

#: Leaves a sleeper behind that is not in the run's process group, as ``style`` says.
ESCAPE = """\
import json, os, pathlib, subprocess, sys
args = json.loads(os.environ.get("PARSEQ_ARGS") or "{}")
style = args.get("style") or sys.argv[1]
out = pathlib.Path(os.environ.get("PARSEQ_OUTPUT_DIR") or sys.argv[2])
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
if style == "session":
    pid = subprocess.Popen(sleeper, start_new_session=True).pid
else:  # a double fork and setsid(): the classic daemon
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.execv(sys.executable, sleeper)
        os._exit(0)
    os.close(w)
    os.wait()
    pid = int(os.read(r, 32))
(out / "escaped.pid").write_text(str(pid))
print("left", pid, "behind", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"


# --- pure parts ------------------------------------------------------------------------------


def test_a_non_root_process_can_switch_users_only_with_every_switch_capability() -> None:
    every = sum(1 << bit for bit in procs.SWITCH_CAPS.values())
    assert procs.can_switch_user(euid=0)
    assert procs.can_switch_user(euid=1000, caps=every)
    assert not procs.can_switch_user(euid=1000, caps=every & ~(1 << procs.SWITCH_CAPS["kill"]))
    assert not procs.can_switch_user(euid=1000)
    assert procs.missing_switch_caps(1 << procs.SWITCH_CAPS["setuid"]) == [
        "chown",
        "dac_override",
        "fowner",
        "kill",
        "setgid",
    ]


@as_root
def test_parsers_sharing_the_workers_user_is_named_as_a_problem() -> None:
    assert sandbox.shared_user_problem(Config(run_as_user="nobody")) is None
    assert sandbox.shared_user_problem(Config(run_as_uid_base=200_000)) is None
    problem = sandbox.shared_user_problem(Config(run_as_user="none"))
    assert problem is not None and problem.startswith("PARSEQ_RUN_AS_USER is none: parsers")
    assert "PARSEQ_ALLOW_SHARED_USER=1" in problem
    with pytest.raises(ConfigError, match="must not be root"):  # refused outright
        sandbox.shared_user_problem(Config(run_as_user="root"))


# --- escaped processes die with their run (in this process) ------------------------------------


@pytest.fixture
def _stop_servers() -> Iterator[None]:
    yield
    forkserver.stop_all()


@pytest.mark.usefixtures("_stop_servers")
@pytest.mark.parametrize("style", ["session", "double-fork"])
@pytest.mark.parametrize("fork", [False, True], ids=["fresh", "fork-server"])
def test_processes_that_left_the_runs_group_are_killed_when_it_ends(
    tmp_path: Path, style: str, fork: bool
) -> None:
    """Killing the run's process group missed these: a child in a session of its own, and a
    daemon (double fork + setsid) re-parented away from the run."""
    root = os.geteuid() == 0
    if not root and not fork:
        pytest.skip("without a sandbox user only a fork server's runs are swept")
    user = SandboxUser("parseq-test", 300_601, 300_601) if root else None
    script = tmp_path / "escape.py"
    script.write_text(ESCAPE)
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the sandbox user writes the pid here
    proc = runner.spawn(
        [PARSER_PYTHON, str(script), style, str(out)],
        {"PATH": "/usr/bin:/bin"},
        tmp_path,
        user=user,
        fork_servers=2 if fork else 0,
    )
    assert isinstance(proc, forkserver.ForkedProcess) is fork
    outcome = supervisor.supervise(
        proc, tmp_path / "run.log", timeout_s=20, run_uid=user.uid if user else None
    )
    assert outcome.status is RunStatus.COMPLETED, outcome.error
    pid = int((out / "escaped.pid").read_text())
    assert (tmp_path / "run.log").read_text() == f"left {pid} behind\n"
    assert not _alive(pid)  # already when the run's end is known, not some time after


# --- a worker that is not root --------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Folders of a worker running as :data:`WORKER_UID`: var/, envs/, home, and the parsers
    (readable by all), with the parsers' env built once."""
    if os.geteuid() != 0:
        pytest.skip("starting a non-root worker needs root")
    root = traversable(tmp_path_factory.mktemp("nonroot"))
    parsers = root / "parsers"
    parsers.mkdir(mode=0o755)
    for name, code in {"probe.py": PROBE, "escape.py": ESCAPE}.items():
        (parsers / name).write_text(code)
        (parsers / name).chmod(0o644)
    for name in ("envs", "home"):
        (root / name).mkdir()
        os.chown(root / name, WORKER_UID, WORKER_UID)
    _build_parsers_env(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _build_parsers_env(site: Path) -> None:
    """Build the parsers' env as the worker with the capabilities would. Here, without them,
    the worker's own Python resolves to another one (the venv's base lies under a 0700 /root),
    which cannot start virtualenv either: it gets the same env under its own key."""
    code = (
        "from parseq.envs import cache as envs\n"
        "from parseq.core.config import Config\n"
        "from parseq.sandbox.limits import base_python\n"
        "config = Config.from_env()\n"
        "envs.acquire(config, [], python=base_python(config)).release()\n"
        "print(envs.env_key([], (), base_python(config)))\n"
    )
    key = _parseq(site, site, ["-c", code], caps=True, module=False).stdout.strip()
    code = code.replace("envs.acquire(config, [], python=base_python(config)).release()\n", "")
    shared_key = _parseq(site, site, ["-c", code], caps=False, module=False).stdout.strip()
    assert (site / "envs" / key).is_dir(), key
    if shared_key != key:
        (site / "envs" / shared_key).symlink_to(site / "envs" / key)


@pytest.fixture
def var(site: Path) -> Path:
    """A fresh var/ of the worker's (its keys generated into it on first start)."""
    path = site / f"var-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    os.chown(path, WORKER_UID, WORKER_UID)
    return path


#: Keys of the worker's own environment: no parser may see them anywhere.
NEEDLES = {
    "PARSEQ_S3_SECRET_ACCESS_KEY": f"s3-secret-{uuid.uuid4().hex}",
    "PARSEQ_ADMIN_PASSWORD": f"admin-password-{uuid.uuid4().hex}",
    "PARSEQ_SECRETS_OLD_KEYS": Fernet.generate_key().decode(),
}


def _parseq(
    site: Path,
    var: Path,
    command: list[str],
    *,
    caps: bool,
    wait: bool = True,
    module: bool = True,
    as_root: bool = False,
    **settings: str,
) -> Any:
    """``parseq <command>`` as :data:`WORKER_UID`, with the switch capabilities (ambient, as a
    container's or systemd's would be) or none; settings and keys in its environment only.
    Returns the finished process, or (``wait=False``) the started one. ``module=False``: run
    ``python <command>`` instead; ``as_root``: as root, as we are."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(site / "home"),
        "PARSEQ_VAR_DIR": str(var),
        "PARSEQ_ENVS_DIR": str(site / "envs"),
        "PARSEQ_PARSERS_DIR": str(site / "parsers"),
        "PARSEQ_NOTEBOOKS_DIR": str(site / "parsers"),
        "PARSEQ_PYTHON": PARSER_PYTHON,
        "PARSEQ_LOG_LEVEL": "WARNING",
        **NEEDLES,
        **settings,
    }
    setpriv = ["setpriv", f"--reuid={WORKER_UID}", f"--regid={WORKER_UID}", "--clear-groups"]
    if caps:
        setpriv += [f"--inh-caps={SWITCH_CAPS}", f"--ambient-caps={SWITCH_CAPS}"]
    if as_root:
        setpriv = ["setpriv"]
    argv = [*setpriv, "--", sys.executable, *(["-m", "parseq.cli"] if module else []), *command]
    if not wait:
        pipe = subprocess.PIPE
        return subprocess.Popen(argv, env=env, stdout=pipe, stderr=pipe, text=True)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def _stored(var: Path, run_id: int, name: str) -> bytes:
    return (var / "storage" / "runs" / str(run_id) / name).read_bytes()


def _run_id(result: subprocess.CompletedProcess[str]) -> int:
    assert result.stdout.startswith("run "), result.stdout + result.stderr
    return int(result.stdout.split()[1])


@as_root
@pytest.mark.parametrize("worker", ["root", "non-root"])
@pytest.mark.parametrize("fork_servers", ["0", "8"], ids=["fresh", "fork-server"])
def test_a_worker_that_can_switch_users_runs_parsers_as_another_user(
    site: Path, var: Path, fork_servers: str, worker: str
) -> None:
    """Root, or not root with the switch capabilities: the parser runs as nobody, with no
    capability left, and finds none of the worker's keys in any process's environment or
    command line, nor can it open the worker's (or its fork server's) environment or memory,
    its key files, its database, or list var/."""
    if worker == "root":
        os.chown(var, 0, 0)
    result = _parseq(
        site,
        var,
        ["run", "probe", "--arg", f"var={var}"],
        caps=True,
        as_root=worker == "root",
        PARSEQ_FORK_SERVERS=fork_servers,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOT SANDBOXED" not in result.stderr
    report = json.loads(_stored(var, _run_id(result), "report.json"))
    assert (report["uid"], report["cap_eff"], report["dumpable"]) == (65534, 0, 1)
    needles = [*NEEDLES.values(), *((var / k).read_text() for k in ("secrets_key", "secret_key"))]
    assert not [n for n in needles if any(n in text for text in report["texts"])]
    assert report["ancestors"], "the probe found no parent"
    for seen in report["ancestors"].values():
        assert seen == {"environ": "PermissionError", "mem": "PermissionError"}
    assert report["files"] == dict.fromkeys(
        ["secrets_key", "secret_key", "parseq.db", "var/"], "PermissionError"
    )
    assert oct((var / "secrets_key").stat().st_mode & 0o777) == "0o600"


@as_root
@pytest.mark.parametrize("fork_servers", ["0", "8"], ids=["fresh", "fork-server"])
def test_parsers_sharing_the_workers_user_still_cannot_read_its_environment_or_memory(
    site: Path, var: Path, fork_servers: str
) -> None:
    """Without the capabilities parsers run as the worker's own user: ``parseq run`` says so
    loudly. The worker and its fork server are not dumpable, so their environment and memory
    stay closed; their files do not (hence ``parseq worker`` refuses: next test)."""
    result = _parseq(
        site,
        var,
        ["run", "probe", "--arg", f"var={var}"],
        caps=False,
        PARSEQ_FORK_SERVERS=fork_servers,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PARSERS ARE NOT SANDBOXED FROM PARSEQ" in result.stderr
    report = json.loads(_stored(var, _run_id(result), "report.json"))
    assert report["uid"] == WORKER_UID
    assert not [n for n in NEEDLES.values() if any(n in text for text in report["texts"])]
    own = [seen for seen in report["ancestors"].values()]
    assert own and all(s == {"environ": "PermissionError", "mem": "PermissionError"} for s in own)
    assert report["files"]["secrets_key"] == "read"  # the same user: no file is closed to it


@as_root
def test_a_non_root_worker_that_cannot_switch_users_refuses_to_start(site: Path, var: Path) -> None:
    result = _parseq(site, var, ["worker"], caps=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("parseq: error: this worker is not root and lacks the capabilities")
    assert "PARSEQ_ALLOW_SHARED_USER=1" in last


@as_root
def test_allow_shared_user_lets_it_start_with_a_warning(site: Path, var: Path) -> None:
    proc = _parseq(site, var, ["worker"], caps=False, wait=False, PARSEQ_ALLOW_SHARED_USER="1")
    try:
        assert proc.stdout.readline().startswith("Parseq worker on"), proc.stderr.read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "PARSERS ARE NOT SANDBOXED FROM PARSEQ" in err


@as_root
@pytest.mark.parametrize("style", ["session", "double-fork"])
@pytest.mark.parametrize("fork_servers", ["0", "8"], ids=["fresh", "fork-server"])
def test_a_non_root_workers_runs_leave_no_process_behind(
    site: Path, var: Path, style: str, fork_servers: str
) -> None:
    result = _parseq(
        site,
        var,
        ["run", "escape", "--arg", f"style={style}"],
        caps=True,
        PARSEQ_FORK_SERVERS=fork_servers,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int(_stored(var, _run_id(result), "escaped.pid"))
    deadline = time.monotonic() + 1
    while _alive(pid) and time.monotonic() < deadline:  # ``parseq run`` itself has exited
        time.sleep(0.05)
    assert not _alive(pid)


@pytest.mark.usefixtures("_stop_servers")
def test_a_forked_runs_daemon_lives_while_its_run_does_whatever_other_runs_end(
    tmp_path: Path,
) -> None:
    """The fork server kills only what ended runs left: a daemon of a run still running stays
    below that run (a subreaper) until it ends."""
    user = SandboxUser("parseq-test", 300_602, 300_602) if os.geteuid() == 0 else None
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    holder = tmp_path / "holder.py"
    holder.write_text(ESCAPE + "import time\ntime.sleep(600)\n")
    quick = tmp_path / "quick.py"
    quick.write_text("print('done')\n")
    env = {"PATH": "/usr/bin:/bin"}
    held = runner.spawn(
        [PARSER_PYTHON, str(holder), "double-fork", str(out)],
        env,
        tmp_path,
        user=user,
        fork_servers=2,
    )
    assert held.stdout.readline().startswith(b"left ")
    pid = int((out / "escaped.pid").read_text())
    other = runner.spawn([PARSER_PYTHON, str(quick)], env, tmp_path, user=user, fork_servers=2)
    assert isinstance(other, forkserver.ForkedProcess) and isinstance(held, type(other))
    run_uid = user.uid if user else None
    outcome = supervisor.supervise(other, tmp_path / "other.log", timeout_s=20, run_uid=run_uid)
    assert outcome.status is RunStatus.COMPLETED
    assert _alive(pid)  # the other run's end left it alone
    outcome = supervisor.supervise(held, tmp_path / "held.log", timeout_s=0.5, run_uid=run_uid)
    assert outcome.status is RunStatus.TIMEOUT
    assert not _alive(pid)
