"""A run's folder and what is kept of it: the files a parser leaves are its results.

The parser's working directory *is* its output folder (``PARSEQ_OUTPUT_DIR``), so a scraper
that writes ``books.csv`` or ``data/products.csv`` relative to where it runs has it stored
without knowing about Parseq. A folder parser (``parsers/<name>/main.py``) gets the files
shipped beside its script copied in first, so it opens ``config.json`` by a relative path as
it does in its own folder; the copies it leaves unchanged are not results.

:func:`collect` lists what to store and says, as run warnings, what it could not store (links,
special files) or stored under another name (control characters that no download header can
carry, the run log's name).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from parseq.sandbox.limits import SandboxUser
from parseq.services.registry import UPLOADS_DIR
from parseq.worker.sdk import TMP_PREFIX
from parseq.worker.uploads import sha256

#: Entries of a parser's folder that are never copied in nor stored: caches and VCS folders.
SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", ".parseq"})
#: Script names that make a parser a folder parser (the discovery convention).
FOLDER_MAINS = frozenset({"main.py", "main.ipynb"})
#: ``RunFile.name``'s column length.
MAX_NAME_CHARS = 512
#: Warnings kept on a run at most; the rest are counted in a last one.
MAX_WARNINGS = 50
#: Characters no HTTP header (and so no download's file name) may hold: ASCII control
#: characters, DEL, and the stand-ins Python uses for bytes that are not UTF-8.
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\udc80-\udcff]")
NO_RESULT = "no result files: the run wrote no file, nothing to output.txt and nothing to stdout"


@dataclass
class Collected:
    """The files to store (stored name -> path) and what the run should be told."""

    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def folder_of(script: Path, root: Path) -> Path | None:
    """The parser's own folder when it is a folder parser (``<root>/<dir>/main.py``), else None.
    Scripts directly in the root have no folder of their own, nor have uploaded ones: the
    uploads folder holds every user's (a parser named ``main`` included)."""
    folder = script.parent
    if script.name not in FOLDER_MAINS or folder == root or not folder.is_relative_to(root):
        return None
    if folder.relative_to(root).parts[0] == UPLOADS_DIR:
        return None
    return folder


def copy_folder(folder: Path, dest: Path, user: SandboxUser | None) -> dict[str, str]:
    """Copy the regular files and folders of ``folder`` into ``dest`` (owned by ``user`` when
    given, so the parser may change them); return each copied file's sha256 by its relative
    name. Links and special files are not copied: a link could hand over a file the worker may
    read and the parser may not."""
    shipped: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
        rel_dir = Path(dirpath).relative_to(folder)
        for name in [*dirnames, *filenames]:
            src = Path(dirpath) / name
            st = os.lstat(src)
            target = dest / rel_dir / name
            if stat.S_ISDIR(st.st_mode):
                target.mkdir(exist_ok=True)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(src, target, follow_symlinks=False)
                shutil.copystat(src, target, follow_symlinks=False)
                shipped[(rel_dir / name).as_posix()] = sha256(target)
            else:
                continue
            if user is not None:
                os.lchown(target, user.uid, user.gid)
    return shipped


def collect(
    out_dir: Path,
    shipped: dict[str, str],
    reserved: dict[str, Path],
    file_limit_bytes: int = 0,
) -> Collected:
    """Every file under ``out_dir`` (subfolders too) to store, after the ``reserved`` ones (the
    run log), except the SDK's temporary files and shipped copies left unchanged. Links and
    special files are named in the warnings; so is a file that reached ``file_limit_bytes``
    (it may have been cut short) and one stored under another name."""
    found = Collected(files=dict(reserved))
    for dirpath, dirnames, filenames in os.walk(out_dir):
        rel_dir = Path(dirpath).relative_to(out_dir)
        kept_dirs = []
        for name in sorted(dirnames):
            rel = (rel_dir / name).as_posix()
            if name in SKIPPED_DIRS:
                continue
            if os.path.islink(os.path.join(dirpath, name)):
                found.warnings.append(f"{_show(rel)}: a link to a folder, not stored")
            else:
                kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            _consider(found, Path(dirpath) / name, (rel_dir / name).as_posix(), shipped)
    for name, path in found.files.items():
        if name not in reserved and file_limit_bytes and path.stat().st_size >= file_limit_bytes:
            found.warnings.append(
                f"{_show(name)}: reached the file size limit ({file_limit_bytes} bytes, "
                "PARSEQ_MAX_FILE_BYTES or the parser's limit): it may be cut short"
            )
    return found


def _consider(found: Collected, path: Path, rel: str, shipped: dict[str, str]) -> None:
    """Add one entry of the output folder to ``found`` (or a warning why not)."""
    if path.name.startswith(TMP_PREFIX):
        return
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        found.warnings.append(f"{_show(rel)}: a link, not stored")
        return
    if not stat.S_ISREG(st.st_mode):
        found.warnings.append(f"{_show(rel)}: not a regular file (a pipe, socket or device)")
        return
    if rel in shipped and sha256(path) == shipped[rel]:
        return  # shipped with the parser and left as it was: not a result
    add(found, rel, path)


def add(found: Collected, rel: str, path: Path) -> str:
    """Add ``path`` under ``rel``, or under a safe, free name (with a warning saying so)."""
    name = _BAD_CHARS.sub("_", rel)
    if len(name) > MAX_NAME_CHARS:
        found.warnings.append(
            f"{_show(rel[:80])}...: a name longer than {MAX_NAME_CHARS}, not stored"
        )
        return ""
    why = "its name has control characters" if name != rel else ""
    base, n = name, 1
    while name in found.files:
        name, n = f"{base}~{n}", n + 1
        why = why or "its name is taken"
    if why:
        found.warnings.append(f"{_show(rel)}: stored as {name} ({why})")
    found.files[name] = path
    return name


class StdoutCopy:
    """An ``on_line`` callback of :func:`parseq.sandbox.supervisor.supervise` keeping the parser's
    stdout (redacted, as the log has it) in ``path``, up to ``max_bytes`` (0: no limit), for
    an ``output.txt`` the parser left empty."""

    def __init__(self, path: Path, max_bytes: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        self.truncated = False
        self._fh: BinaryIO | None = None

    def __call__(self, stream: str, line: bytes) -> None:
        if stream != "stdout" or self.truncated:
            return
        if self._fh is None:
            self._fh = self.path.open("wb")  # first output: a silent run makes no file
        if self.max_bytes and self.written + len(line) > self.max_bytes:
            line, self.truncated = line[: self.max_bytes - self.written], True
        self._fh.write(line)
        self.written += len(line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def fill_output(output: Path, stdout: StdoutCopy) -> bool:
    """Make ``output.txt`` hold the parser's stdout when the parser left it empty or wrote
    none, or create it empty; True when stdout became the output. An entry that is not a
    regular file (a link the parser planted) is left alone: :func:`collect` reports it."""
    try:
        st = os.lstat(output)
    except FileNotFoundError:
        st = None
    if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_size > 0):
        return False
    if stdout.written:
        os.replace(stdout.path, output)  # the name is replaced, never followed
        return True
    if st is None:
        output.touch()
    return False


def finish_warnings(warnings: list[str]) -> list[str]:
    """At most :data:`MAX_WARNINGS`, the rest counted."""
    if len(warnings) <= MAX_WARNINGS:
        return warnings
    left = len(warnings) - MAX_WARNINGS + 1
    return [*warnings[: MAX_WARNINGS - 1], f"... and {left} more"]


def _show(name: str) -> str:
    """A name as a warning shows it: control characters escaped, never raw."""
    return repr(name)[1:-1] if _BAD_CHARS.search(name) else name
