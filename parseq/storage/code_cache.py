"""This machine's copies of parser code versions, unpacked once per content hash.

``var/code/<sha256>/`` holds a version's files; it appears by an atomic rename of a finished
folder, so a half-written one is never used, and a cache hit costs a directory check. Stored
content lives under ``code/<sha256>`` (:func:`storage_key`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from parseq.core.config import Config
from parseq.core.enums import CodeFormat
from parseq.core.errors import NotFound, StorageError
from parseq.storage import code_archive
from parseq.storage.base import Storage

log = logging.getLogger(__name__)

STAGING = ".tmp"


def storage_key(sha256: str) -> str:
    """Where content with this hash is stored (shared by every parser that has it)."""
    return f"code/{sha256}"


def folder_for(config: Config, storage: Storage, sha: str, fmt: CodeFormat, filename: str) -> Path:
    """The unpacked folder of the content ``sha``, fetched from storage on first use."""
    folder = config.code_dir / sha
    if folder.is_dir():
        return folder
    return fetch(config, storage, sha, fmt, filename)


def fetch(config: Config, storage: Storage, sha: str, fmt: CodeFormat, filename: str) -> Path:
    """Download, check and unpack stored code into the cache; return its folder."""
    try:
        data = b"".join(storage.iter_bytes(storage_key(sha)))
    except NotFound:
        raise StorageError(f"code {sha} is missing from storage") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise StorageError(f"stored code {sha} does not match its hash")
    staging = staging_dir(config)
    try:
        # Limits do not apply: the content was checked against them when it was saved.
        unlimited = code_archive.Limits(len(data), 2**63, 2**31)
        code_archive.unpack(data, fmt, staging, filename, unlimited)
        final = install(config, staging, sha)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("code %s fetched", sha)
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
