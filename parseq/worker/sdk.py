"""The worker's side of the parser SDK (``parseq_sdk``): shipping it to parser processes and
reading the progress they report.

Shipping: parser processes get ``PYTHONPATH`` set to a folder that holds a copy of the SDK and
nothing else (``<var>/sdk/<content hash>/parseq_sdk``), so any interpreter (this one, a
per-parser virtualenv) can ``import parseq_sdk`` without seeing Flask or any of Parseq's own
modules, and a user's packages never shadow ours. The folder is named by the hash of the SDK's
sources, so an upgrade makes a new folder and a running parser keeps its own.

Progress: the SDK writes its latest report atomically to ``PARSEQ_PROGRESS_FILE`` (in the run's
working folder, outside its output); the run's watchdog reads it on every heartbeat. A file
rather than marker lines on stdout: no parse of (possibly huge or hostile) output lines, nothing
in the run log, and the worker reads one small file per beat however often the parser reports.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import math
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from parseq.core.errors import ConfigError

SDK_PACKAGE = "parseq_sdk"
PROGRESS_FILE = "progress.json"
#: Prefix of the SDK's temporary files (``parseq_sdk._atomic``): never stored as results.
TMP_PREFIX = ".parseq-tmp-"
MAX_MESSAGE_CHARS = 500


def sdk_sources() -> list[Path]:
    """The SDK's source files, in a stable order."""
    spec = importlib.util.find_spec(SDK_PACKAGE)  # located, not imported into the worker
    if spec is None or spec.origin is None:
        raise ConfigError("the parseq_sdk package is not installed next to parseq")
    root = Path(spec.origin).resolve().parent
    return sorted(p for p in root.glob("*.py"))


@functools.cache
def _sdk_digest() -> str:
    """The hash of the SDK's sources: they do not change while a process runs."""
    digest = hashlib.sha256()
    for path in sdk_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def install_sdk(sdk_dir: Path) -> Path:
    """Make sure a copy of the SDK exists under ``sdk_dir``; return the folder to put on
    ``PYTHONPATH`` (it contains only ``parseq_sdk/``). One stat when it already exists."""
    target = sdk_dir / _sdk_digest()
    if (target / SDK_PACKAGE / "__init__.py").is_file():
        return target
    sources = sdk_sources()
    sdk_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=sdk_dir, prefix=".staging-"))
    try:
        (staging / SDK_PACKAGE).mkdir()
        for path in sources:
            shutil.copyfile(path, staging / SDK_PACKAGE / path.name)
        try:
            staging.rename(target)  # atomic; another worker may have won the race
        except OSError:
            if not (target / SDK_PACKAGE / "__init__.py").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass(frozen=True)
class Progress:
    """A parser's latest progress report."""

    done: float | None
    total: float | None
    message: str | None


def read_progress(path: Path) -> Progress | None:
    """The report in ``path``; None when there is none yet or it is not a valid report (a
    parser may write anything there: it is checked, never trusted)."""
    try:
        # Read by the worker (root, maybe) from the parser's folder: no link to a file of
        # someone else's, and no FIFO to block on.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = json.loads(fh.read(64 * 1024))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    done, total = _number(data.get("done")), _number(data.get("total"))
    message = data.get("message")
    message = str(message)[:MAX_MESSAGE_CHARS] if message not in (None, "") else None
    if done is None and total is None and message is None:
        return None
    return Progress(done, total, message)


def progress_columns(path: Path) -> dict[str, float | str | None]:
    """The ``Run`` columns to update from the report in ``path`` (none when there is none)."""
    progress = read_progress(path)
    if progress is None:
        return {}
    return {
        "progress_done": progress.done,
        "progress_total": progress.total,
        "progress_message": progress.message,
    }


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    with contextlib.suppress(OverflowError):
        if math.isfinite(value):
            return float(value)
    return None
