"""What a parser process may use: resource limits, the user it runs as, and who owns its dirs.

:func:`build_limits` and :func:`rlimits` are pure (parser + config -> numbers); the effects are
small: :func:`prepare_dirs` / :func:`release_state` hand a run's folders to the sandbox user and
back.

The limits and the user switch are applied by a launcher prefix
(:func:`parseq.sandbox.runner.launcher_argv`): util-linux's ``prlimit`` and ``setpriv`` exec'd
in front of the interpreter. That lets ``subprocess`` spawn with ``vfork()``, where a
``preexec_fn`` (or ``user=``) forces a full ``fork()`` of the worker, a copy of its whole
address space per run. Without the two tools the same work is done by :func:`apply_rlimits` in
a ``preexec_fn`` (``runner.spawn``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import resource
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from parseq.core.config import Config
from parseq.core.errors import ConfigError
from parseq.sandbox import procs

log = logging.getLogger(__name__)

#: ``run_as_user`` values that turn the user switch off.
NO_USER = frozenset({"", "none", "off"})
#: Extra CPU seconds between the soft limit (SIGXCPU) and the hard one (SIGKILL).
CPU_HARD_MARGIN_S = 5


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run; 0 means no limit."""

    memory_bytes: int
    cpu_s: float
    processes: int
    file_bytes: int
    open_files: int


#: ``(resource, soft, hard)`` as ``resource.setrlimit`` takes it.
RLimit = tuple[int, int, int]


@dataclass(frozen=True)
class SandboxUser:
    """The unprivileged identity a parser runs as."""

    name: str
    uid: int
    gid: int


class OwnLimits(Protocol):
    """The limits a parser may set for itself (None: the configured default), as a parser
    row carries them: the sandbox reads these values and knows nothing of the database."""

    max_memory_bytes: int | None
    max_cpu_s: float | None
    max_processes: int | None
    max_file_bytes: int | None
    max_open_files: int | None


def build_limits(parser: OwnLimits, config: Config) -> Limits:
    """The parser's own limits where it sets them, the configured defaults elsewhere."""

    def pick(own: float | None, default: float) -> float:
        return default if own is None else own

    return Limits(
        memory_bytes=int(pick(parser.max_memory_bytes, config.max_memory_bytes)),
        cpu_s=float(pick(parser.max_cpu_s, config.max_cpu_s)),
        processes=int(pick(parser.max_processes, config.max_processes)),
        file_bytes=int(pick(parser.max_file_bytes, config.max_file_bytes)),
        open_files=int(pick(parser.max_open_files, config.max_open_files)),
    )


def rlimits(limits: Limits) -> list[RLimit]:
    """The ``setrlimit`` calls that enforce ``limits`` (limits of 0 are left out)."""
    out: list[RLimit] = []
    if limits.memory_bytes > 0:
        out.append((resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes))
    if limits.cpu_s > 0:
        soft = max(1, int(limits.cpu_s + 0.999))
        out.append((resource.RLIMIT_CPU, soft, soft + CPU_HARD_MARGIN_S))
    if limits.processes > 0:
        out.append((resource.RLIMIT_NPROC, limits.processes, limits.processes))
    if limits.file_bytes > 0:
        out.append((resource.RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes))
    if limits.open_files > 0:
        out.append((resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    return out


def clamp_rlimits(
    limits: list[RLimit], current: Callable[[int], tuple[int, int]] = resource.getrlimit
) -> list[RLimit]:
    """``limits`` lowered to the hard limits this process already has (``current``): a child
    may only lower them, and an unprivileged one could not raise them anyway."""
    out: list[RLimit] = []
    for res, soft, hard in limits:
        _, cur_hard = current(res)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        out.append((res, soft, hard))
    return out


def apply_rlimits(limits: list[RLimit]) -> None:
    """Set each (clamped) limit on this process: the ``preexec_fn`` path."""
    for res, soft, hard in limits:
        resource.setrlimit(res, (soft, hard))


def sandbox_user(
    config: Config, euid: int | None = None, parser_id: int | None = None
) -> SandboxUser | None:
    """The user a parser runs as when this process can switch users (root, or the
    capabilities of :data:`procs.SWITCH_CAPS`): a uid of the parser's own with
    ``run_as_uid_base``, else ``run_as_user``. None when it cannot, or when that user is this
    process's own: parsers then share its user (:func:`shared_user_problem`)."""
    if not procs.can_switch_user(euid):
        return None
    euid = os.geteuid() if euid is None else euid
    if config.run_as_uid_base and parser_id is not None:
        uid = config.run_as_uid_base + parser_id
        return SandboxUser(f"parseq-{parser_id}", uid, uid)
    name = config.run_as_user.strip()
    if name.lower() in NO_USER:
        return None
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        raise ConfigError(f"PARSEQ_RUN_AS_USER: no user {name!r} on this machine") from None
    if entry.pw_uid == 0:
        raise ConfigError("PARSEQ_RUN_AS_USER must not be root")
    if entry.pw_uid == euid:
        return None
    return SandboxUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def shared_user_problem(config: Config) -> str | None:
    """Why parsers would run as this process's own user, or None when they get one of their
    own: then they could read its files (``var/``, key files, a SQLite database), signal it and
    kill its fork servers; only its environment and memory stay out of reach (non-dumpable)."""
    if sandbox_user(config) is not None:
        return None
    if config.run_as_user.strip().lower() in NO_USER:
        why = "PARSEQ_RUN_AS_USER is none"
    elif procs.can_switch_user():
        why = f"PARSEQ_RUN_AS_USER={config.run_as_user} is this worker's own user"
    else:
        missing = ", ".join(procs.missing_switch_caps())
        why = f"this worker is not root and lacks the capabilities {missing}"
    return (
        f"{why}: parsers would run as its user (uid {os.geteuid()}) and could read its files "
        "(var/, key files) and signal it; run the worker as root (or with those capabilities) "
        "and PARSEQ_RUN_AS_USER / PARSEQ_RUN_AS_UID_BASE, or set PARSEQ_ALLOW_SHARED_USER=1 "
        "to accept this"
    )


def check_reachable(user: SandboxUser, path: Path, need: int = 0o1) -> None:
    """Raise :class:`ConfigError` naming the folder that keeps ``user`` from ``path`` (``need``:
    0o1 execute, 0o4 read), e.g. a Python installed under a 0700 /root, instead of the bare
    "Permission denied" the parser would otherwise die with."""
    real = path.resolve()
    for part, bits in [*((p, 0o1) for p in reversed(real.parents)), (real, need)]:
        st = part.stat()
        if st.st_uid == user.uid:
            mode = (st.st_mode >> 6) & 0o7
        elif st.st_gid == user.gid:
            mode = (st.st_mode >> 3) & 0o7
        else:
            mode = st.st_mode & 0o7
        if mode & bits != bits:
            raise ConfigError(
                f"parsers run as user {user.name!r}, who cannot reach {path} "
                f"({part} is mode {stat.S_IMODE(st.st_mode):o}); make it readable by other "
                "users (for Python: PARSEQ_PYTHON), or set PARSEQ_RUN_AS_USER=none"
            )


def parser_python(config: Config) -> str:
    """The base Python of parser virtualenvs: ``PARSEQ_PYTHON``, else the one running Parseq,
    unless the sandbox user cannot run it (pyenv under a 0700 /root): then a system Python of
    the same version that it can, when there is one."""
    if config.python:
        return config.python
    user = sandbox_user(config)
    if user is None:
        return sys.executable
    version = "python{}.{}".format(*sys.version_info[:2])
    for candidate in (sys.executable, f"/usr/local/bin/{version}", f"/usr/bin/{version}"):
        try:
            check_reachable(user, Path(candidate))
        except (OSError, ConfigError):
            continue
        return candidate
    return sys.executable  # runs then fail with check_reachable's explanation


#: :func:`parser_python`'s answers by the settings it reads and the euid. It checks up to three
#: interpreters' folders against the sandbox user: too much to ask again on every run. A restart
#: picks up changed folder permissions.
_parser_pythons: dict[tuple[str, str, int], str] = {}


def base_python(config: Config) -> str:
    """:func:`parser_python`, found once per process: what a worker builds parser envs on."""
    key = (config.python, config.run_as_user, os.geteuid())
    if key not in _parser_pythons:
        _parser_pythons[key] = parser_python(config)
    return _parser_pythons[key]


def harden_var(config: Config, db_url: str) -> None:
    """Let the sandbox user traverse ``var/`` to its own folders but list or open nothing else:
    the SQLite files and local storage become the worker's alone."""
    for path in (config.var_dir, config.runs_dir, config.state_dir):
        path.chmod(0o711)
    storage = config.var_dir / "storage"
    if config.storage_url == storage.as_uri():
        storage.mkdir(exist_ok=True)
        storage.chmod(0o700)
    if db_url.startswith("sqlite:///"):
        db_file = Path(db_url.split(":///", 1)[1])
        for path in db_file.parent.glob(db_file.name + "*"):
            with contextlib.suppress(OSError):
                path.chmod(0o600)


_shared: set[Path] = set()


def share_sdk(sdk_dir: Path, sdk_path: Path) -> None:
    """Let the sandbox user read the SDK copy at ``sdk_path``: once per process, as a copy is
    named by its content and never changes."""
    if sdk_path in _shared:
        return
    sdk_dir.chmod(0o755)  # nosec B103  # the sandbox user reads its copy
    make_readable(sdk_path)
    _shared.add(sdk_path)


def make_readable(root: Path) -> None:
    """Let every user read ``root``'s tree (code shipped to parsers: the SDK). Paths that
    vanish meanwhile (another worker's staging folder, renamed away) are skipped."""
    for dirpath, _dirs, filenames in os.walk(root):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(dirpath, 0o755)  # nosec B103  # the sandbox user must read the SDK copy
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                if not os.path.islink(path):
                    os.chmod(path, 0o644)


def prepare_dirs(user: SandboxUser, run_dirs: list[Path], state_dir: Path, run_id: int) -> None:
    """Hand the run's fresh folders and the parser's state folder to ``user`` (mode 0700), and
    note the run among the state folder's users (:func:`release_state`)."""
    for path in run_dirs:
        os.chown(path, user.uid, user.gid)
        path.chmod(0o700)
    with _state_lock(state_dir):
        _write_users(state_dir, {*_users(state_dir), (os.getpid(), run_id)})
        _chown_tree(state_dir, user)
        state_dir.chmod(0o700)


def release_state(state_dir: Path, run_id: int) -> None:
    """Give the state folder back to the worker's user (0700) once no run of its parser is
    left on this machine, so parsers that share the sandbox user cannot reach each other's
    state between their runs.

    The runs using the folder are noted in a file beside its lock, as ``<worker pid> <run id>``
    lines (state folders are machine-local, so are the workers that use them); a dead worker's
    runs are dropped, so a SIGKILLed worker does not keep the folder handed over. A run of the
    same parser claimed meanwhile takes the folder back in its :func:`prepare_dirs`, which waits
    for the lock."""
    with _state_lock(state_dir):
        left = {(pid, rid) for pid, rid in _users(state_dir) if _alive(pid)}
        left.discard((os.getpid(), run_id))
        _write_users(state_dir, left)
        if not left:
            os.chown(state_dir, os.geteuid(), os.getegid())
            state_dir.chmod(0o700)


@contextlib.contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    # Worker processes on one machine share var/: hand-over and take-back must not interleave.
    fd = os.open(_beside(state_dir, "lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _beside(state_dir: Path, suffix: str) -> Path:
    """A file of the worker's beside the state folder, out of the sandbox user's reach."""
    return state_dir.parent / f".{state_dir.name}.{suffix}"


def _users(state_dir: Path) -> set[tuple[int, int]]:
    """The ``(worker pid, run id)`` of the runs noted as using the state folder."""
    try:
        text = _beside(state_dir, "runs").read_text()
    except FileNotFoundError:
        return set()
    users = set()
    for line in text.splitlines():
        with contextlib.suppress(ValueError):  # a line torn by a crash mid-write
            pid, run_id = map(int, line.split())
            users.add((pid, run_id))
    return users


def _write_users(state_dir: Path, users: set[tuple[int, int]]) -> None:
    path = _beside(state_dir, "runs")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{pid} {run_id}\n" for pid, run_id in sorted(users))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _chown_tree(top: Path, user: SandboxUser) -> None:
    """Own ``top`` and what the sandbox left in it, without following links: entries owned by
    root or the worker are skipped, so a planted symlink or hard link to a system file is never
    handed over."""
    if os.lstat(top).st_uid == user.uid:
        return
    os.chown(top, user.uid, user.gid)
    skip = {0, os.geteuid(), user.uid}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_uid in skip or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                continue
            os.lchown(path, user.uid, user.gid)
