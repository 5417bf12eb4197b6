"""Per-parser virtualenvs, cached by requirement set: build once, reuse with a directory check.

Layout of ``envs_dir``::

    <key>/            a finished env (virtualenv + installed requirements), with
                      parseq-env.json (what it holds) and parseq-build.log
    .tmp/<key>.*/     builds in progress; renamed into place only when complete
    .locks/<key>.build, <key>.use
                      flock files: one builder per key; shared "in use" leases (their
                      mtime is the env's last use, for LRU eviction)
    .failed/<key>.log the log of the last failed build of a key
    .builds.log       one JSON line per build (key, ok, seconds, installer)

A half-built env is never used because only a complete one is renamed to ``<key>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess  # nosec B404  # uv builds the envs: a child process by design
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parseq import requirements as reqs
from parseq import sandbox
from parseq.config import Config
from parseq.errors import RunFailed

log = logging.getLogger(__name__)

META_FILE = "parseq-env.json"
BUILD_LOG = "parseq-build.log"
REQUIREMENTS_FILE = "parseq-requirements.txt"
JOURNAL = ".builds.log"


class EnvBuildFailed(RunFailed):
    """Building a parser's env failed; carries the key, the failing requirement and the log."""

    code = "env_build_failed"

    def __init__(self, message: str, key: str, requirement: str | None, build_log: str) -> None:
        super().__init__(message, tail=build_log[-2000:])
        self.key = key
        self.requirement = requirement
        self.build_log = build_log


def python_tag(python: str = "") -> str:
    """What an env is bound to besides its requirements: its base Python (``PARSEQ_PYTHON``,
    else this one) and where it lives."""
    base = os.path.realpath(python or getattr(sys, "_base_executable", sys.executable))
    version = ".".join(map(str, sys.version_info[:3]))
    return f"{sys.implementation.name}-{version}-{platform.machine()}-{base}"


#: :func:`sandbox.parser_python`'s answers by the settings it reads and the euid. It checks
#: up to three interpreters' folders against the sandbox user: asked on every run, that was
#: half the CPU of finding a cached env. A restart picks up changed folder permissions.
_base_pythons: dict[tuple[str, str, int], str] = {}


def base_python(config: Config) -> str:
    """The base Python of parser envs (:func:`sandbox.parser_python`), found once per process."""
    key = (config.python, config.run_as_user, os.geteuid())
    if key not in _base_pythons:
        _base_pythons[key] = sandbox.parser_python(config)
    return _base_pythons[key]


def env_key(lines: Sequence[str], extra: Sequence[str] = (), python: str = "") -> str:
    """Hash of the Python and the normalized requirement set (plus trusted ``extra`` lines)."""
    payload = "\n".join([python_tag(python), *sorted(set(lines)), "--extra--", *sorted(set(extra))])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass
class Env:
    """A ready env, held "in use" (safe from eviction) until :meth:`release`."""

    key: str
    path: Path
    built: bool
    _lease: int | None = field(default=None, repr=False)

    @property
    def python(self) -> Path:
        """The interpreter to run by absolute path (a symlink: never resolve it)."""
        return self.path / "bin" / "python"

    def release(self) -> None:
        if self._lease is not None:
            os.close(self._lease)  # closing the descriptor drops its flock
            self._lease = None

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _dir(config: Config, name: str) -> Path:
    path = config.envs_dir / name
    path.mkdir(parents=True, exist_ok=True, mode=0o755)
    return path


def _open_lock(config: Config, name: str) -> int:
    return os.open(_dir(config, ".locks") / name, os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def _exclusive(config: Config, name: str) -> Iterator[None]:
    fd = _open_lock(config, name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def acquire(
    config: Config,
    lines: Sequence[str],
    extra: Sequence[str] = (),
    while_building: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
) -> Env:
    """The env for this requirement set, built if missing; held in use until released.

    A cache hit is a directory check and a shared flock: no installer runs. A build runs
    inside ``while_building()`` (a run's heartbeat, say), which a cache hit never enters.
    """
    key = env_key(lines, extra, base_python(config))
    lease = _open_lock(config, f"{key}.use")
    try:
        fcntl.flock(lease, fcntl.LOCK_SH)
        os.utime(lease)  # last use, for LRU eviction
        path = config.envs_dir / key
        built = False
        if not path.is_dir():
            with while_building():
                built = build_env(config, lines, extra)
        return Env(key, path, built, lease)
    except BaseException:
        os.close(lease)
        raise


def build_env(config: Config, lines: Sequence[str], extra: Sequence[str] = ()) -> bool:
    """Build the env for ``lines`` (+ trusted ``extra`` lines, e.g. Parseq's SDK) unless it
    exists; True if this call built it. Concurrent callers for one key build it once."""
    key = env_key(lines, extra, base_python(config))
    final = config.envs_dir / key
    with _exclusive(config, f"{key}.build"):
        if final.is_dir():
            return False  # another thread or process built it while we waited
        tmp_root = _dir(config, ".tmp")
        for stale in tmp_root.glob(f"{key}.*"):  # left by a crashed build of this key
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=tmp_root))
        started = time.monotonic()
        builder = _Builder(config, key, tmp)
        try:
            builder.build(list(lines), list(extra))
            _relocate(tmp, final)
            meta = {
                "key": key,
                "python": python_tag(base_python(config)),
                "requirements": list(lines),
                "extra": list(extra),
                "installer": builder.installer,
                "built_at": time.time(),
                "build_s": round(time.monotonic() - started, 3),
                "size_bytes": _size(tmp),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            (tmp / BUILD_LOG).write_text(builder.text())
            _make_readable(tmp)
            os.rename(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            _journal(config, key, False, time.monotonic() - started, builder.installer)
            if isinstance(exc, EnvBuildFailed):
                (_dir(config, ".failed") / f"{key}.log").write_text(exc.build_log)
            raise
        _journal(config, key, True, time.monotonic() - started, builder.installer)
        with contextlib.suppress(FileNotFoundError):
            (config.envs_dir / ".failed" / f"{key}.log").unlink()
    log.info("env %s built in %.2f s (%s)", key, meta["build_s"], builder.installer)
    prune(config, config.envs_max_count or None, config.envs_max_bytes or None)
    return True


class _Builder:
    """Runs virtualenv and the installer into ``tmp``, collecting one build log."""

    def __init__(self, config: Config, key: str, tmp: Path) -> None:
        self.config = config
        self.key = key
        self.tmp = tmp
        self.installer = "none"
        self.chunks: list[str] = []
        self.deadline = time.monotonic() + config.env_build_timeout_s

    def text(self) -> str:
        return "".join(self.chunks)

    def note(self, line: str) -> None:
        self.chunks.append(f"[parseq] {line}\n")

    def build(self, lines: list[str], extra: list[str]) -> None:
        wanted = lines + extra
        uv = _find_uv() if wanted and self.config.env_installer != "pip" else None
        if wanted:
            self.installer = "uv" if uv else "pip"
            if uv is None and self.config.env_installer == "auto":
                self.note("uv not found: falling back to pip (much slower)")
                log.warning("env %s: uv not found, installing with pip (much slower)", self.key)
            elif uv is None and self.config.env_installer == "uv":
                self._fail(lines, "PARSEQ_ENV_INSTALLER=uv but uv is not installed")
        seed = [] if self.installer == "pip" else ["--no-seed"]
        venv = [sys.executable, "-m", "virtualenv", "--no-download", "--no-periodic-update"]
        base = base_python(self.config)
        self.run([*venv, *seed, "--prompt", self.key[:12], "-p", base, str(self.tmp)], lines)
        if not wanted:
            return
        req_file = self.tmp / REQUIREMENTS_FILE
        req_file.write_text("".join(f"{line}\n" for line in wanted))
        python = str(self.tmp / "bin" / "python")
        if uv:
            cmd = [uv, "pip", "install", "--python", python, "--color", "never", "-r"]
        else:
            cmd = [python, "-m", "pip", "install", "--no-input", "--no-color", "-r"]
        self.run([*cmd, str(req_file)], lines)

    def run(self, cmd: list[str], lines: list[str]) -> None:
        self.note("$ " + " ".join(cmd))
        env = {**self.config.installer_env, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("VIRTUAL_ENV", None)
        try:
            # cmd is a list (no shell): uv's path and a requirements file Parseq wrote.
            proc = subprocess.run(  # nosec B603  # see above
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=max(self.deadline - time.monotonic(), 1),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self.chunks.append((exc.output or b"").decode("utf-8", "replace"))
            limit = self.config.env_build_timeout_s
            self._fail(lines, f"timed out after {limit:g} s")
        self.chunks.append(proc.stdout.decode("utf-8", "replace"))
        if proc.returncode != 0:
            self._fail(lines, f"{Path(cmd[0]).name} exited with code {proc.returncode}")

    def _fail(self, lines: list[str], why: str) -> None:
        text = self.text()
        culprit = failing_requirement(lines, text)
        what = f"requirement {culprit!r}" if culprit else f"requirements {', '.join(lines)}"
        tail = text[-self.config.error_tail_bytes :].strip()
        message = f"could not build the environment for {what}: {why}\n{tail}"
        self.note(why)
        raise EnvBuildFailed(message, self.key, culprit, self.text())


def failing_requirement(lines: Sequence[str], build_log: str) -> str | None:
    """The requirement an installer's error names, looked for after its first error line."""
    lower = build_log.lower()
    marks = ("error", "\u00d7")  # uv marks its errors with a multiplication sign
    starts = [i for i in map(lower.find, marks) if i >= 0]
    section = lower[min(starts) :] if starts else lower
    for line in lines:
        name = reqs.name_of(line)
        if name and any(v in section for v in {name, name.replace("-", "_")}):
            return line
    return None


def _find_uv() -> str | None:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _relocate(tmp: Path, final: Path) -> None:
    """virtualenv and installers write the env's absolute path into scripts and ``.pth``
    files; point them at the final path before the rename moves the env there."""
    old, new = str(tmp).encode(), str(final).encode()
    candidates = [*(tmp / "bin").iterdir(), *tmp.glob("lib/python*/site-packages/*.pth")]
    for path in candidates:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))


def _make_readable(root: Path) -> None:
    """Envs are shared, possibly with an unprivileged parser user: 0755 dirs, o+r files."""
    for dirpath, _dirs, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # nosec B103  # envs hold no secrets; parsers must read them
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))


def _size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _journal(config: Config, key: str, ok: bool, seconds: float, installer: str) -> None:
    entry = {"at": time.time(), "key": key, "ok": ok, "build_s": round(seconds, 3)}
    entry.update(installer=installer, pid=os.getpid())
    with open(config.envs_dir / JOURNAL, "a", encoding="utf-8") as fh:  # O_APPEND: one write
        fh.write(json.dumps(entry) + "\n")


def builds(config: Config, key: str | None = None) -> list[dict[str, Any]]:
    """Build attempts recorded in the journal, oldest first (optionally of one key)."""
    try:
        text = (config.envs_dir / JOURNAL).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [e for e in entries if key is None or e["key"] == key]


@dataclass(frozen=True)
class EnvInfo:
    key: str
    path: Path
    size_bytes: int
    last_used: float
    in_use: bool
    requirements: list[str]


def list_envs(config: Config) -> list[EnvInfo]:
    """Every finished env, most recently used first."""
    if not config.envs_dir.is_dir():
        return []
    found = []
    for path in config.envs_dir.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            meta = json.loads((path / META_FILE).read_text())
        except (OSError, ValueError):
            meta = {}
        lease = config.envs_dir / ".locks" / f"{path.name}.use"
        last_used = lease.stat().st_mtime if lease.exists() else path.stat().st_mtime
        size = meta.get("size_bytes") or _size(path)
        in_use = not _try_lock(config, path.name, lambda: None)
        found.append(
            EnvInfo(path.name, path, size, last_used, in_use, meta.get("requirements", []))
        )
    return sorted(found, key=lambda e: e.last_used, reverse=True)


def _try_lock(config: Config, key: str, action: Any) -> bool:
    """Run ``action`` holding the key's use and build locks exclusively; False if in use."""
    fds = [_open_lock(config, f"{key}.use"), _open_lock(config, f"{key}.build")]
    try:
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        action()
        return True
    finally:
        for fd in fds:
            os.close(fd)


def remove(config: Config, key: str) -> bool:
    """Remove an env unless it is in use: renamed away first (atomic), then deleted."""
    path = config.envs_dir / key

    def _remove() -> None:
        if path.is_dir():
            trash = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=_dir(config, ".trash")))
            os.rename(path, trash / "env")
            shutil.rmtree(trash, ignore_errors=True)

    return _try_lock(config, key, _remove)


def prune(config: Config, max_count: int | None, max_bytes: int | None) -> list[str]:
    """Evict least-recently-used envs past ``max_count`` envs or ``max_bytes`` in total
    (None = no limit), never one in use; return the evicted keys."""
    evicted = []
    kept_count = kept_bytes = 0
    for env in list_envs(config):  # most recent first
        over = (max_count is not None and kept_count + 1 > max_count) or (
            max_bytes is not None and kept_bytes + env.size_bytes > max_bytes
        )
        if over and remove(config, env.key):
            evicted.append(env.key)
            log.info("env %s evicted (least recently used)", env.key)
            continue
        kept_count += 1
        kept_bytes += env.size_bytes
    return evicted
