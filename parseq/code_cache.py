"""A worker's copies of parser code versions, unpacked once per content hash.

``var/code/<sha256>/`` holds a version's files; it appears by an atomic rename of a finished
folder, so a half-written one is never used, and a cache hit costs a directory check (the
version's row comes with the run the worker claims: ``Run.code``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from parseq import code_archive, collect
from parseq import requirements as reqs
from parseq.code_models import CodeFormat, CodeVersion, storage_key
from parseq.config import Config
from parseq.errors import NotFound, StorageError
from parseq.models import Parser, ParserKind
from parseq.registry import resolve_script, root_for
from parseq.storage import Storage

log = logging.getLogger(__name__)

STAGING = ".tmp"


@dataclass(frozen=True)
class Version:
    """What a worker needs of a code version."""

    parser_id: int
    number: int
    sha256: str
    kind: ParserKind
    format: CodeFormat
    filename: str
    requirements_in: str
    requirements_lock: str

    @property
    def script_name(self) -> str:
        return code_archive.script_name(self.format, self.kind, self.filename)

    @classmethod
    def of(cls, row: CodeVersion) -> Version:
        return cls(
            row.parser_id,
            row.number,
            row.sha256,
            row.kind,
            row.format,
            row.filename,
            row.requirements_in,
            row.requirements_lock,
        )


def script_for(config: Config, storage: Storage, wanted: Version) -> Path:
    """The version's entry point on this machine, fetched and unpacked on first use."""
    folder = config.code_dir / wanted.sha256
    if not folder.is_dir():
        folder = fetch(config, storage, wanted)
    return folder / wanted.script_name


def fetch(config: Config, storage: Storage, wanted: Version) -> Path:
    """Download, check and unpack a version into the cache; return its folder."""
    try:
        data = b"".join(storage.iter_bytes(storage_key(wanted.sha256)))
    except NotFound:
        raise StorageError(
            f"code {wanted.sha256} of version {wanted.number} is missing from storage"
        ) from None
    if hashlib.sha256(data).hexdigest() != wanted.sha256:
        raise StorageError(f"stored code {wanted.sha256} does not match its hash")
    staging = staging_dir(config)
    try:
        # Limits do not apply: the version was checked against them when it was saved.
        unlimited = code_archive.Limits(len(data), 2**63, 2**31)
        code_archive.unpack(data, wanted.format, staging, wanted.filename, unlimited)
        final = install(config, staging, wanted.sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("code %s (parser %s v%d) fetched", wanted.sha256, wanted.parser_id, wanted.number)
    return final


def staging_dir(config: Config) -> Path:
    """An empty folder to unpack into, beside the cache (so the rename is atomic)."""
    root = config.code_dir
    (root / STAGING).mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)  # parsers (a sandbox user) reach their code, and list nothing
    return Path(tempfile.mkdtemp(dir=root / STAGING))


def install(config: Config, staging: Path, sha: str) -> Path:
    """Move an unpacked version into place, readable by every user (the sandbox user runs
    it); if another worker thread got there first, its copy stays."""
    final = config.code_dir / sha
    if final.is_dir():
        return final
    for dirpath, dirnames, _files in os.walk(staging):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)  # nosec B103  # parsers read their code
    staging.chmod(0o755)
    try:
        staging.rename(final)
    except OSError:  # ENOTEMPTY/EEXIST: a concurrent fetch won the race
        if not final.is_dir():
            raise
    return final


@dataclass(frozen=True)
class RunCode:
    """What a run executes: its entry point, the folder shipped with it (a folder parser's),
    and its code version (None: a parser with no stored code runs the file on this disk)."""

    script: Path
    folder: Path | None
    version: Version | None


def for_run(config: Config, storage: Storage, parser: Parser, row: CodeVersion | None) -> RunCode:
    """The code of a run of ``parser`` at version ``row`` (the run's ``code``), on this
    machine."""
    if row is None:
        script = resolve_script(config, parser)
        return RunCode(script, collect.folder_of(script, root_for(config, parser.kind)), None)
    wanted = Version.of(row)
    script = script_for(config, storage, wanted)
    return RunCode(script, script.parent if wanted.format.is_archive else None, wanted)


def requirements_for(config: Config, parser: Parser, code: RunCode) -> reqs.Requirements:
    """The requirement lines a run's env is built from: its version's lock when the parser's
    requirements are still those it was locked from (they are, unless changed around the
    admin and API), else the declared lines as they are."""
    found = reqs.for_parser(config, parser, code.script)
    wanted = code.version
    if wanted is None or not config.lock_requirements or not found.lines:
        return found
    if "\n".join(found.lines) != wanted.requirements_in or not wanted.requirements_lock:
        log.warning("parser %s v%d: requirements changed since locked", parser.name, wanted.number)
        return found
    return reqs.Requirements(_parsed_lock(wanted.requirements_lock), "lock")


@functools.lru_cache(maxsize=256)
def _parsed_lock(text: str) -> tuple[str, ...]:
    # Stored locks were written by Parseq, but the policy still applies to what installs.
    return reqs.parse(text, reqs.Policy(allow_unsafe=True), "requirements lock")
