"""Resolving a parser's requirements once into a lock that every worker installs.

``uv pip compile --generate-hashes`` pins every package (dependencies too) with its hashes, for
the Python that parser envs are built on. The lock is stored with the code version, so two
workers never resolve ``requests`` to two releases; installing a hashed lock is pip's and uv's
hash-checking mode, so a worker also installs the very files the lock was made from.
"""

from __future__ import annotations

import logging
import subprocess  # nosec B404  # uv resolves the requirements: a child process by design
import tempfile
from collections.abc import Sequence
from pathlib import Path

from parseq.core.config import Config
from parseq.core.errors import ValidationError
from parseq.envs import cache, envbuild
from parseq.envs import requirements as reqs

log = logging.getLogger(__name__)

#: Shown first in every lock, so a lock read anywhere says what it is.
HEADER = "# Locked by Parseq (uv pip compile --generate-hashes); do not edit.\n"


def lock(config: Config, lines: Sequence[str], python: str | None = None) -> str:
    """The lock of normalized requirement ``lines`` for the Python envs are built on
    (``python``, as :func:`parseq.envs.cache.base_python` picks it); empty when there are none.
    Lines that are a lock already (every requirement pinned with a hash) are kept as they are.
    A failed
    resolve raises :class:`ValidationError` (field ``requirements``) with the resolver's
    message."""
    if not lines:
        return ""
    names = [line for line in lines if reqs.name_of(line)]
    options = [line for line in lines if line.startswith("-")]
    if all(reqs.HASH_OPTION in line for line in names):
        return HEADER + "\n".join(lines) + "\n"
    uv = envbuild.find_uv()
    if uv is None:
        raise ValidationError(
            "requirements cannot be locked: uv is not installed "
            "(or set PARSEQ_LOCK_REQUIREMENTS=false)",
            field="requirements",
        )
    with tempfile.TemporaryDirectory(prefix="parseq-lock-") as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        cmd = [uv, "pip", "compile", str(source), "--generate-hashes", "--no-header"]
        cmd += ["--no-annotate", "--color", "never", "--quiet"]
        cmd += ["--python", cache.base_python(config, python)]
        cmd += ["--cache-dir", str(_cache_dir(config))]
        text = _run(config, cmd, tmp)
    # The index options stay: an env installs from where its lock was resolved.
    return HEADER + "".join(f"{o}\n" for o in options) + text


def _cache_dir(config: Config) -> Path:
    """uv's cache for resolves: beside the envs, which it also fills."""
    return config.envs_dir / ".uv-cache"


def _run(config: Config, cmd: list[str], cwd: str) -> str:
    env = {**config.installer_env, "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        # cmd is a list (no shell): uv's path and a requirements file Parseq wrote.
        proc = subprocess.run(  # nosec B603  # see above
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=config.lock_timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ValidationError(
            f"resolving the requirements timed out after {config.lock_timeout_s:g} s "
            "(PARSEQ_LOCK_TIMEOUT_S)",
            field="requirements",
        ) from None
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()
        tail = message[-config.error_tail_bytes :]
        log.info("requirements did not resolve: %s", tail)
        raise ValidationError(
            f"the requirements do not resolve: {tail}", field="requirements", resolver=tail
        )
    return proc.stdout.decode("utf-8")
