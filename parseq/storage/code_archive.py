"""Parser code as bytes: what an upload is (script, notebook, folder archive), packing a folder
parser reproducibly, and unpacking safely into a folder.

Unpacking refuses what could escape or surprise the folder it fills: absolute names, ``..``,
links, devices, too many files or too many bytes (an archive bomb). Only regular files and
folders are written, with modes of our choosing.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from parseq.core.enums import CodeFormat, ParserKind
from parseq.core.errors import ValidationError

#: A folder parser's entry point, by kind: what an archive must hold at its top.
MAINS = {ParserKind.SCRIPT: "main.py", ParserKind.NOTEBOOK: "main.ipynb"}
#: Folders never packed from ``parsers/``: caches and version control.
SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", ".parseq"})
CONTENT_TYPES = {
    "text/x-python": CodeFormat.PY,
    "application/x-python-code": CodeFormat.PY,
    "application/x-ipynb+json": CodeFormat.IPYNB,
    "application/zip": CodeFormat.ZIP,
    "application/x-zip-compressed": CodeFormat.ZIP,
    "application/gzip": CodeFormat.TAR_GZ,
    "application/x-gzip": CodeFormat.TAR_GZ,
    "application/x-tar+gzip": CodeFormat.TAR_GZ,
}
SUFFIXES = {".py": CodeFormat.PY, ".ipynb": CodeFormat.IPYNB, ".zip": CodeFormat.ZIP}
SUFFIXES |= {".tgz": CodeFormat.TAR_GZ, ".gz": CodeFormat.TAR_GZ}
FIELD = "code"


@dataclass(frozen=True)
class Limits:
    """Caps on one upload: its size, and what an archive may unpack to."""

    max_bytes: int
    max_unpacked_bytes: int
    max_files: int


@dataclass(frozen=True)
class Unpacked:
    """What :func:`unpack` wrote: the parser's kind and its entry point, relative."""

    kind: ParserKind
    script: str


def detect(data: bytes, filename: str = "", content_type: str = "") -> CodeFormat:
    """The format of uploaded code: by its content type, else its file name, else its first
    bytes (zip and gzip magic numbers)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in CONTENT_TYPES:
        return CONTENT_TYPES[mime]
    name = filename.lower()
    if name.endswith(".tar.gz"):
        return CodeFormat.TAR_GZ
    suffix = PurePosixPath(name).suffix
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if data.startswith(b"PK\x03\x04"):
        return CodeFormat.ZIP
    if data.startswith(b"\x1f\x8b"):
        return CodeFormat.TAR_GZ
    raise ValidationError(
        "upload a .py script (text/x-python), an .ipynb notebook (application/x-ipynb+json), "
        "or a folder parser as a .zip or .tar.gz with main.py or main.ipynb",
        field=FIELD,
    )


def script_name(fmt: CodeFormat, kind: ParserKind, filename: str) -> str:
    """Where a version's entry point lies in its unpacked folder: ``main.py`` or
    ``main.ipynb`` whatever the parser's name, as the folder is shared by every parser with
    the same content (named by its hash)."""
    return MAINS[kind]


def unpack(data: bytes, fmt: CodeFormat, dest: Path, filename: str, limits: Limits) -> Unpacked:
    """Validate ``data`` and write it into the empty folder ``dest``; raise
    :class:`ValidationError` (field ``code``) saying what is wrong."""
    if len(data) > limits.max_bytes:
        raise ValidationError(
            f"code is {len(data)} bytes; the limit is {limits.max_bytes} (PARSEQ_CODE_MAX_BYTES)",
            field=FIELD,
        )
    if fmt is CodeFormat.PY:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"the script is not UTF-8 text: {exc}", field=FIELD) from None
        _write(dest / MAINS[ParserKind.SCRIPT], data)
        return Unpacked(ParserKind.SCRIPT, MAINS[ParserKind.SCRIPT])
    if fmt is CodeFormat.IPYNB:
        _write(dest / MAINS[ParserKind.NOTEBOOK], data)
        return Unpacked(ParserKind.NOTEBOOK, MAINS[ParserKind.NOTEBOOK])
    members = _members(data, fmt, limits)
    prefix = _common_folder(members)
    for name, content in members:
        rel = PurePosixPath(*PurePosixPath(name).parts[len(prefix) :])
        if content is None:
            (dest / rel).mkdir(parents=True, exist_ok=True)
        elif rel.parts:
            _write(dest / rel, content)
    for kind, main in MAINS.items():
        if (dest / main).is_file():
            return Unpacked(kind, main)
    raise ValidationError(
        "the archive has no main.py or main.ipynb at its top (or in its only folder)",
        field=FIELD,
    )


#: An archive member: its name, and its bytes (None for a folder).
_Entry = tuple[str, "bytes | None"]
#: An archive member before it is read: name, declared size (None for a folder), opener.
_Meta = tuple[str, "int | None", Callable[[], IO[bytes] | None]]


def _members(data: bytes, fmt: CodeFormat, limits: Limits) -> list[_Entry]:
    """An archive's members, their names and sizes checked before any is read."""
    try:
        if fmt is CodeFormat.ZIP:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return _read(_checked(_zip_meta(archive), limits))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            return _read(_checked(_tar_meta(archive), limits))
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ValidationError(f"not a valid {fmt.value} archive: {exc}", field=FIELD) from None


def _zip_meta(archive: zipfile.ZipFile) -> Iterator[_Meta]:
    for info in archive.infolist():
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValidationError(f"{info.filename}: links are not allowed", field=FIELD)
        if info.is_dir():
            yield info.filename, None, lambda: None
        else:
            yield info.filename, info.file_size, lambda i=info: archive.open(i)


def _tar_meta(archive: tarfile.TarFile) -> Iterator[_Meta]:
    for member in archive.getmembers():
        if member.issym() or member.islnk():
            raise ValidationError(f"{member.name}: links are not allowed", field=FIELD)
        if member.isdir():
            yield member.name, None, lambda: None
        elif member.isfile():
            yield member.name, member.size, lambda m=member: archive.extractfile(m)
        else:
            raise ValidationError(f"{member.name}: not a file or a folder", field=FIELD)


def _checked(entries: Iterator[_Meta], limits: Limits) -> list[_Meta]:
    """The members, each name checked to stay inside the folder, within the caps."""
    members: list[_Meta] = []
    total = 0
    for name, size, opener in entries:
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or not path.parts or "\0" in name:
            raise ValidationError(f"{name!r}: a path that leaves the folder", field=FIELD)
        if any(part in SKIPPED_DIRS for part in path.parts):
            continue
        members.append((path.as_posix(), size, opener))
        total += size or 0
        if len(members) > limits.max_files:
            raise ValidationError(
                f"the archive holds more than {limits.max_files} files (PARSEQ_CODE_MAX_FILES)",
                field=FIELD,
            )
        if total > limits.max_unpacked_bytes:
            raise ValidationError(
                f"the archive unpacks to more than {limits.max_unpacked_bytes} bytes "
                "(PARSEQ_CODE_MAX_UNPACKED_BYTES)",
                field=FIELD,
            )
    return members


def _read(members: list[_Meta]) -> list[_Entry]:
    """Each member's bytes, refusing more than its header declared (a lying header)."""
    read: list[_Entry] = []
    for name, size, opener in members:
        fh = opener()
        if size is None or fh is None:
            read.append((name, None))
            continue
        with fh:
            data = fh.read(size + 1)
        if len(data) != size:
            raise ValidationError(f"{name}: not the size its header declares", field=FIELD)
        read.append((name, data))
    return read


def _common_folder(members: list[_Entry]) -> tuple[str, ...]:
    """The one folder every member is in (``myparser/`` of a zipped folder), else none: the
    archive's top is then the parser's folder."""
    parts = [PurePosixPath(name).parts for name, _ in members]
    tops = {p[0] for p in parts}
    if len(tops) != 1:
        return ()
    pairs = zip(parts, members, strict=True)
    top_is_folder = all(len(p) > 1 or content is None for p, (_, content) in pairs)
    return (tops.pop(),) if top_is_folder else ()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def pack_folder(folder: Path) -> bytes:
    """A folder parser as a ``.tar.gz`` whose bytes depend on its files only (sorted names,
    no times or owners), so an unchanged folder hashes the same at every start. Links and
    special files are left out, as a run's folder copy leaves them out."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _walk(folder):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            data = path.read_bytes()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _walk(folder: Path) -> Iterator[Path]:
    for entry in sorted(folder.iterdir()):
        st = entry.lstat()
        if stat.S_ISDIR(st.st_mode) and entry.name not in SKIPPED_DIRS:
            yield entry
            yield from _walk(entry)
        elif stat.S_ISREG(st.st_mode):
            yield entry
