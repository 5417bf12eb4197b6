"""Result files: ``output()`` / ``output_json()`` append lines, ``save_file()`` stores a file.

Everything lands in the run's output folder, which Parseq stores with the run. Locally the
folder is ``.parseq/<parser>/output/``, and each process starts the files it appends to afresh,
as every Parseq run starts with an empty folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from parseq_sdk._atomic import atomic_writer
from parseq_sdk.run_context import context

OUTPUT_FILE = "output.txt"
#: Names Parseq writes itself next to the parser's files.
RESERVED_NAMES = frozenset({"run.log"})
_started: set[Path] = set()


class FileNameError(ValueError):
    """A result file name that is not a plain relative path inside the output folder."""


def validate_name(name: str) -> str:
    """A ``/``-separated relative path with no ``..``, hidden parts or odd characters."""
    if not isinstance(name, str) or not name or len(name) > 512:
        raise FileNameError(f"file name {name!r} must be a non-empty string of at most 512 chars")
    if "\\" in name or "\x00" in name or any(ord(c) < 32 for c in name):
        raise FileNameError(f"file name {name!r} has a backslash or a control character")
    path = PurePosixPath(name)
    if path.is_absolute() or name.endswith("/"):
        raise FileNameError(f"file name {name!r} must be relative to the output folder")
    for part in name.split("/"):
        if part in ("", ".", "..") or part.startswith("."):
            raise FileNameError(f"file name {name!r} has an empty, '..' or hidden part")
        if len(part) > 255:
            raise FileNameError(f"file name {name!r} has a part longer than 255 chars")
    if name in RESERVED_NAMES:
        raise FileNameError(f"file name {name!r} is reserved by Parseq")
    return path.as_posix()


def result_path(name: str) -> Path:
    """The absolute path of result file ``name`` (validated), its folder created."""
    path = context.output_dir / validate_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _append(name: str, line: str) -> None:
    path = result_path(name)
    mode = "a"
    if not context.under_parseq and path not in _started:
        mode = "w"  # a local run starts its files afresh, like a Parseq run
    _started.add(path)
    with path.open(mode, encoding="utf-8") as fh:
        fh.write(line if line.endswith("\n") else line + "\n")


def output(text: Any = "", *, file: str = OUTPUT_FILE) -> None:
    """Append ``text`` as a line to ``output.txt`` (or to ``file``). Locally it is echoed too."""
    line = str(text)
    _append(file, line)
    if not context.under_parseq:
        print(line, file=sys.stdout)


def output_json(obj: Any, *, file: str = OUTPUT_FILE) -> None:
    """Append ``obj`` as one JSON line (JSON Lines) to ``output.txt`` (or to ``file``)."""
    _append(file, json.dumps(obj, ensure_ascii=False, default=str))


def save_file(name: str, data: str | bytes | os.PathLike[str] | dict | list) -> Path:
    """Store a result file: text (``str``), ``bytes``, a ``dict``/``list`` (as JSON), or a
    copy of an existing file (a ``Path``). Written atomically; returns where it went."""
    path = result_path(name)
    if isinstance(data, os.PathLike):
        source = Path(data)
        if not source.is_file():
            raise FileNotFoundError(f"save_file({name!r}): {source} is not a file")
        payload = None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)
    elif isinstance(data, str):
        payload = data.encode("utf-8")
    elif isinstance(data, (dict, list)):
        payload = json.dumps(data, ensure_ascii=False, indent=2, default=str).encode("utf-8")
    else:
        raise TypeError(f"save_file({name!r}): cannot store a {type(data).__name__}")
    with atomic_writer(path) as fh:
        if payload is None:
            with Path(data).open("rb") as src:  # type: ignore[arg-type]
                shutil.copyfileobj(src, fh)
        else:
            fh.write(payload)
    return path
