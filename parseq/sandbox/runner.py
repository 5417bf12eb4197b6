"""Start a parser script as a sandboxed subprocess.

The argv comes from :func:`parseq.core.argv.build_command` and the environment from the pure
:func:`build_env`; :func:`spawn` starts it in its own process group, sandboxed;
:mod:`parseq.sandbox.supervisor` then watches it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
import resource
import signal
import subprocess  # nosec B404  # running parser scripts as child processes is the job
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from parseq.core.argv import validate_secret_name
from parseq.sandbox import forkserver, procs
from parseq.sandbox.limits import RLimit, SandboxUser, apply_rlimits, clamp_rlimits
from parseq.sandbox.supervisor import Process

log = logging.getLogger(__name__)

#: prctl(2) option: the signal the child gets when the worker that started it dies.
PR_SET_PDEATHSIG = 1
_PRCTL = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "prctl", None)  # Linux only


@dataclass(frozen=True)
class Launcher:
    """Where util-linux's ``prlimit`` and ``setpriv`` are."""

    prlimit: str
    setpriv: str


#: ``prlimit`` option of each resource :func:`rlimits` may set.
PRLIMIT_OPTIONS = {
    resource.RLIMIT_AS: "--as",
    resource.RLIMIT_CPU: "--cpu",
    resource.RLIMIT_NPROC: "--nproc",
    resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_NOFILE: "--nofile",
}


def find_launcher(dirs: tuple[str, ...] = ("/usr/bin", "/bin")) -> Launcher | None:
    """The two tools when both are installed (util-linux, on every Debian and most Linux
    systems), else None: spawns then fall back to a ``preexec_fn``."""
    found = []
    for tool in ("prlimit", "setpriv"):
        path = next((f"{d}/{tool}" for d in dirs if os.access(f"{d}/{tool}", os.X_OK)), None)
        if path is None:
            return None
        found.append(path)
    return Launcher(*found)


def launcher_argv(launcher: Launcher, limits: list[RLimit], user: SandboxUser | None) -> list[str]:
    """The argv prefix that sets ``limits`` (clamped already), switches to ``user`` (no
    supplementary groups, and none of a non-root worker's capabilities: a uid change between
    two non-zero uids keeps them) and asks for SIGKILL when the worker dies, then execs the rest.

    The parent-death signal is set by ``setpriv`` after its uid change, which would clear it.
    """

    def value(v: int) -> str:
        return "unlimited" if v == resource.RLIM_INFINITY else str(v)

    argv = [launcher.prlimit]
    argv += [f"{PRLIMIT_OPTIONS[res]}={value(soft)}:{value(hard)}" for res, soft, hard in limits]
    argv += ["--", launcher.setpriv]
    if user is not None:
        argv += [f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
        argv += ["--inh-caps=-all", "--ambient-caps=-all"]
    return [*argv, "--pdeathsig=KILL", "--"]


def build_env(
    *,
    base_env: Mapping[str, str],
    run_id: int,
    parser: str,
    args: Mapping[str, Any],
    secrets: Mapping[str, str],
    output_dir: Path,
    positional: Sequence[Any] = (),
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
            "PARSEQ_POSITIONAL": json.dumps(list(positional)),
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
    forked from its env's fork server (:mod:`parseq.sandbox.forkserver`), which sets up the same
    sandbox without an interpreter start; if that fails, the command starts as below.

    With a ``launcher`` (found on the machine by default) that is done by ``prlimit`` and
    ``setpriv`` exec'd in front of ``argv`` and the spawn is a cheap ``vfork()``; with None, by
    a ``preexec_fn`` in a full ``fork()`` of this process.
    """
    limits = clamp_rlimits(list(limits or []))
    if fork_servers > 0 and forkserver.can_fork(argv, env):
        forked = _fork(argv, env, cwd, limits, user, fork_servers)
        if forked is not None:
            return forked
    if launcher == "auto":
        launcher = default_launcher()
    popen: dict[str, Any] = {}
    if launcher is not None:
        argv = [*launcher_argv(launcher, limits, user), *argv]
    else:
        popen["preexec_fn"] = _child_setup(limits, os.getpid())
        if user is not None:
            popen.update(user=user.uid, group=user.gid, extra_groups=[])
    return _popen(argv, env, cwd, user, popen)


def _fork(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    limits: list[RLimit],
    user: SandboxUser | None,
    max_servers: int,
) -> Process | None:
    """The process forked from its env's fork server; None when that failed (logged)."""
    try:
        proc: Process = forkserver.spawn(
            argv, env, cwd, limits=limits, user=user, max_servers=max_servers
        )
    except forkserver.ForkServerError as exc:
        log.warning("%s; starting a fresh interpreter", exc)
        return None
    if user is not None:
        procs.run_started(user.uid)
    return proc


def _popen(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    user: SandboxUser | None,
    popen: dict[str, Any],
) -> Process:
    """``subprocess.Popen`` in a session of its own, with pipes for its output."""
    # argv is a list (no shell); its parts are the launcher's fixed flags, the interpreter, a
    # script path resolved inside the parsers root and --name flags checked by
    # validate_arg_name: hence the nosec.
    if user is not None:  # before the start: what it leaves behind must be re-parented here
        procs.run_started(user.uid)
    try:
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
    except BaseException:
        if user is not None:
            procs.run_ended(user.uid)
        raise


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
        procs.clear_ambient_caps()  # a non-root worker's capabilities would survive the exec
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the worker died before prctl took effect
            os._exit(1)

    return setup
