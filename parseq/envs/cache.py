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

A half-built env is never used because only a complete one is renamed to ``<key>/``. This
module is the cache (keys, locks, the build's temp dir and rename, listing, eviction); the
installer runs in :mod:`parseq.envs.envbuild`.
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
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parseq.envs import envbuild
from parseq.core.config import Config
from parseq.envs.envbuild import EnvBuildFailed  # what acquire raises: callers catch it from here

log = logging.getLogger(__name__)

META_FILE = "parseq-env.json"
BUILD_LOG = "parseq-build.log"
JOURNAL = ".builds.log"


def python_tag(python: str = "") -> str:
    """What an env is bound to besides its requirements: its base Python (``PARSEQ_PYTHON``,
    else this one) and where it lives."""
    base = os.path.realpath(python or getattr(sys, "_base_executable", sys.executable))
    version = ".".join(map(str, sys.version_info[:3]))
    return f"{sys.implementation.name}-{version}-{platform.machine()}-{base}"


def base_python(config: Config, python: str | None = None) -> str:
    """The base Python of parser envs: ``python`` when the caller knows it (a worker passes the
    one its sandbox user can run, :func:`parseq.sandbox.limits.parser_python`), else
    ``PARSEQ_PYTHON``, else the one running Parseq."""
    return python or config.python or sys.executable


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
    on_build: Callable[[bool, float], None] | None = None,
    python: str | None = None,
) -> Env:
    """The env for this requirement set, built if missing; held in use until released.

    A cache hit is a directory check and a shared flock: no installer runs. A build runs
    inside ``while_building()`` (a run's heartbeat, say), which a cache hit never enters;
    ``on_build(ok, seconds)`` hears of each build this call ran (the worker counts them);
    ``python`` is the base interpreter (:func:`base_python`).
    """
    python = base_python(config, python)
    key = env_key(lines, extra, python)
    lease = _open_lock(config, f"{key}.use")
    try:
        fcntl.flock(lease, fcntl.LOCK_SH)
        os.utime(lease)  # last use, for LRU eviction
        path = config.envs_dir / key
        built = False
        if not path.is_dir():
            started, ok = time.monotonic(), False
            try:
                with while_building():
                    built = build_env(config, lines, extra, python)
                ok = True
            finally:
                # not when another process built it meanwhile
                if on_build is not None and (built or not ok):
                    on_build(ok, time.monotonic() - started)
        return Env(key, path, built, lease)
    except BaseException:
        os.close(lease)
        raise


def build_env(
    config: Config, lines: Sequence[str], extra: Sequence[str] = (), python: str | None = None
) -> bool:
    """Build the env for ``lines`` (+ trusted ``extra`` lines, e.g. Parseq's SDK) unless it
    exists; True if this call built it. Concurrent callers for one key build it once."""
    python = base_python(config, python)
    key = env_key(lines, extra, python)
    final = config.envs_dir / key
    with _exclusive(config, f"{key}.build"):
        if final.is_dir():
            return False  # another thread or process built it while we waited
        tmp_root = _dir(config, ".tmp")
        for stale in tmp_root.glob(f"{key}.*"):  # left by a crashed build of this key
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=tmp_root))
        started = time.monotonic()
        builder = envbuild.Builder(config, key, tmp, python)
        try:
            builder.build(list(lines), list(extra))
            envbuild.relocate(tmp, final)
            meta = {
                "key": key,
                "python": python_tag(python),
                "requirements": list(lines),
                "extra": list(extra),
                "installer": builder.installer,
                "built_at": time.time(),
                "build_s": round(time.monotonic() - started, 3),
                "size_bytes": _size(tmp),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            (tmp / BUILD_LOG).write_text(builder.text())
            envbuild.make_readable(tmp)
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
