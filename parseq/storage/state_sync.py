"""A parser's state folder mirrored in storage: the layout, and materializing it before a run
(the commit after it is :mod:`parseq.storage.state_commit`).

The stored copy is content-addressed: ``state/<parser id>/manifest.json`` lists each file's
path, SHA-256, size and mtime, and each content is the object ``state/<parser id>/blobs/<sha>``.
A commit uploads only contents the manifest did not have (an unchanged page-cache entry costs
nothing), then the new manifest (a commit cut short leaves the old manifest, whole). Each
machine keeps its copy of the folder with a record of what it last synced (``.<id>.sync.json``
beside it, out of the parser's reach), so a run on the machine that ran last downloads nothing,
and a local file is hashed again only when its size or mtime changed.

Plain values in, plain values out: no database here. Who may commit when is the lease's business
(:mod:`parseq.db.state_leases`); :mod:`parseq.worker.state` ties the two to a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parseq.core.errors import NotFound
from parseq.storage.base import Storage

log = logging.getLogger(__name__)

FORMAT = 1
#: The SDK's page cache (``parseq_sdk.fetching.CACHE_DIR``): what the size cap may evict.
CACHE_DIR = "cache"
#: The SDK's key-value store (``parseq_sdk.store.STATE_FILE``): merged key by key when two runs
#: that started without state both made one.
STATE_FILE = "state.json"
#: Files never synced: the SDK's half-written temporaries and its lock files.
TMP_PREFIX = ".parseq-tmp-"
LOCK_SUFFIX = ".lock"
HASH_CHUNK_BYTES = 1024 * 1024

#: path -> {"sha256", "size", "mtime_ns"}
Files = dict[str, dict[str, Any]]


def prefix(parser_id: int) -> str:
    return f"state/{parser_id}"


def manifest_key(parser_id: int) -> str:
    return f"{prefix(parser_id)}/manifest.json"


def blob_key(parser_id: int, sha256: str) -> str:
    return f"{prefix(parser_id)}/blobs/{sha256}"


@dataclass
class Manifest:
    """What storage holds of one parser's state. ``epoch`` changes on a reset (every copy is
    then dropped, not merged); ``generation`` counts commits within an epoch."""

    epoch: str = ""
    generation: int = 0
    files: Files = field(default_factory=dict)
    #: Contents no file uses any more but still stored: deleted in batches (a run that
    #: changes one page pays no delete request), or used again if the content comes back.
    garbage: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        """Names this manifest among all of the parser's: its epoch and generation."""
        return f"{self.epoch}:{self.generation}"

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())

    def to_json(self) -> bytes:
        body = {"format": FORMAT, "epoch": self.epoch, "generation": self.generation}
        return json.dumps({**body, "files": self.files, "garbage": self.garbage}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        return cls(
            str(raw.get("epoch", "")),
            int(raw.get("generation", 0)),
            dict(raw["files"]),
            list(raw.get("garbage", [])),
        )

    def stored(self) -> set[str]:
        """Every content this manifest knows to be in storage."""
        return {f["sha256"] for f in self.files.values()} | set(self.garbage)


def new_epoch() -> str:
    return secrets.token_hex(8)


def read_manifest(storage: Storage, parser_id: int) -> Manifest | None:
    """The stored manifest; None when this parser's state was never stored."""
    try:
        data = b"".join(storage.iter_bytes(manifest_key(parser_id)))
    except NotFound:
        return None
    return Manifest.from_json(data)


def write_manifest(storage: Storage, parser_id: int, manifest: Manifest, scratch: Path) -> None:
    put_bytes(storage, manifest_key(parser_id), manifest.to_json(), scratch)


def put_bytes(storage: Storage, key: str, data: bytes, scratch: Path) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch, prefix=TMP_PREFIX) as fh:
        fh.write(data)
        fh.flush()
        storage.put(key, Path(fh.name))


# --- the local copy ------------------------------------------------------------------------


def record_path(state_dir: Path) -> Path:
    """The machine's record of its last sync, beside the folder (the parser cannot change it)."""
    return state_dir.parent / f".{state_dir.name}.sync.json"


def read_record(state_dir: Path) -> Manifest | None:
    try:
        return Manifest.from_json(record_path(state_dir).read_bytes())
    except (FileNotFoundError, ValueError, KeyError):
        return None


def write_record(state_dir: Path, manifest: Manifest, data: bytes | None = None) -> None:
    """Write the record (``data``: the manifest's JSON, when the caller has it already)."""
    path = record_path(state_dir)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data or manifest.to_json())
    tmp.replace(path)


def _synced(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return not name.startswith(TMP_PREFIX) and not (
        name.startswith(".") and name.endswith(LOCK_SUFFIX)
    )


def scan(state_dir: Path, known: Files | None = None) -> Files:
    """Every regular file under ``state_dir`` with its hash; a file whose size and mtime match
    ``known`` keeps the hash recorded there (not read again). Symlinks are not followed."""
    files: Files = {}
    _scan_into(files, str(state_dir), "", known or {})
    return files


def _scan_into(files: Files, folder: str, rel: str, known: Files) -> None:
    # os.scandir with plain strings: a run scans the folder twice, and pathlib's objects per
    # entry cost more than the stat calls (bench/state.py).
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        path = rel + entry.name
        if entry.is_dir(follow_symlinks=False):
            _scan_into(files, entry.path, path + "/", known)
            continue
        if not entry.is_file(follow_symlinks=False) or not _synced(path):
            continue
        st = entry.stat(follow_symlinks=False)
        old = known.get(path)
        if old and old["size"] == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            files[path] = old
        else:
            sha = _hash(Path(entry.path))
            files[path] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return (a or {}).get("sha256") == (b or {}).get("sha256")


# --- materialize ---------------------------------------------------------------------------


@dataclass
class Synced:
    """The outcome of :func:`materialize`: what storage held (the commit's base) and what the
    folder holds now."""

    base: Manifest
    local: Files
    downloaded: int = 0
    conflicts: list[str] = field(default_factory=list)


#: ``(uid, gid)`` that files and folders made by :func:`materialize` are given: the sandbox
#: user's, whose runs write the folder (its own files it keeps between runs).
Owner = tuple[int, int]


def materialize(
    storage: Storage,
    parser_id: int,
    state_dir: Path,
    owner: Owner | None = None,
    stored_version: str | None = None,
) -> Synced:
    """Bring the local folder up to the stored state.

    Files another machine changed since this one last synced are downloaded (or deleted); a
    file changed here only (a run whose commit failed or never came) is kept, to be committed
    after this run; changed on both sides, the stored one wins (logged). After a reset (a new
    epoch) the local copy is dropped. Never stored yet (a new parser, or state from before it
    was shared): the folder is kept as it is. ``stored_version``: the stored manifest's
    version as the lease knows it; when this machine synced that version last, nothing is
    read from storage (the machine that ran the parser last, the usual case).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    record = read_record(state_dir)
    if record is not None and stored_version is not None and record.version == stored_version:
        return Synced(record, dict(record.files))
    remote = read_manifest(storage, parser_id)
    local = scan(state_dir, record.files if record else None)
    if remote is None:
        return Synced(Manifest(new_epoch(), 0, {}), local)
    if record is not None and record.epoch != remote.epoch:
        base_files: Files = {}
        local_wins: set[str] = set()  # reset: nothing local survives
    else:
        base_files = record.files if record else {}
        local_wins = {p for p in local if not _same(local[p], base_files.get(p))}
    synced = Synced(remote, dict(local))
    if _bring_in(storage, parser_id, state_dir, owner, synced, base_files, local_wins):
        prune_empty_dirs(state_dir)
    if synced.conflicts:
        log.warning(
            "state of parser %s: %d file(s) changed here and elsewhere, the stored copy wins: %s",
            parser_id,
            len(synced.conflicts),
            ", ".join(synced.conflicts[:5]),
        )
    # The record says what was synced: a file kept changed here is recorded as stored, so it
    # stays "changed here" until a commit stores it.
    synced_files = {
        p: have if _same(have := synced.local.get(p), want) else want
        for p, want in remote.files.items()
    }
    new_record = Manifest(remote.epoch, remote.generation, synced_files, remote.garbage)
    if record != new_record:
        write_record(state_dir, new_record)
    return synced


def _bring_in(
    storage: Storage,
    parser_id: int,
    state_dir: Path,
    owner: Owner | None,
    synced: Synced,
    base_files: Files,
    local_wins: set[str],
) -> bool:
    """Download (or delete) each file that differs from the stored one, as
    :func:`materialize` says; return whether a file was deleted."""
    pruned = False
    remote, local = synced.base, dict(synced.local)
    for path in sorted(set(remote.files) | set(local)):
        want, have = remote.files.get(path), local.get(path)
        if _same(want, have):
            continue
        if path in local_wins:
            if _same(want, base_files.get(path)):
                continue  # changed here only: keep it for this run's commit
            if path == STATE_FILE and want is not None and path not in base_files:
                # Two runs that started with no state both made one: keep both's keys.
                merged = _merge_state(storage, parser_id, want, state_dir / path, owner)
                if merged is not None:
                    synced.local[path] = merged
                    continue
            synced.conflicts.append(path)
        target = _safe_target(state_dir, path, owner)
        if want is None:
            target.unlink(missing_ok=True)
            synced.local.pop(path, None)
            pruned = True
            continue
        synced.local[path] = _download(storage, parser_id, want, target, owner)
        synced.downloaded += 1
    return pruned


def _merge_state(
    storage: Storage, parser_id: int, entry: dict[str, Any], local: Path, owner: Owner | None
) -> dict[str, Any] | None:
    """``state.json`` with the stored file's keys and this run's (its own win on a key both
    set), written over the local file; None when either is not a JSON object."""
    try:
        theirs = json.loads(b"".join(storage.iter_bytes(blob_key(parser_id, entry["sha256"]))))
        ours = json.loads(local.read_bytes())
    except (ValueError, OSError):
        return None
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return None
    data = json.dumps({**theirs, **ours}, ensure_ascii=False, indent=1, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=TMP_PREFIX)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode())
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, local)
    st = local.stat()
    return {"sha256": _hash(local), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _safe_target(state_dir: Path, path: str, owner: Owner | None) -> Path:
    """``state_dir / path`` with no symlink on the way: the parser owns the folder during its
    runs and may have planted one, which the worker (root, in the sandbox) must not write
    through. Such a link is removed (it was never synced)."""
    current = state_dir
    for part in path.split("/")[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            current.unlink()
        if not current.exists():
            current.mkdir()
            if owner is not None:
                os.chown(current, *owner)
    return state_dir / path


def _download(
    storage: Storage, parser_id: int, entry: dict[str, Any], target: Path, owner: Owner | None
) -> Files:
    """Write the stored content over ``target`` atomically, with the stored mtime (page-cache
    eviction goes by age, on every machine alike)."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in storage.iter_bytes(blob_key(parser_id, entry["sha256"])):
                fh.write(chunk)
        mtime_ns = int(entry.get("mtime_ns") or 0)
        if owner is not None:
            os.chown(tmp, *owner)
        if mtime_ns:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    st = target.stat()
    return {"sha256": entry["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def prune_empty_dirs(state_dir: Path) -> None:
    for root, dirs, names in os.walk(state_dir, topdown=False):
        if Path(root) != state_dir and not dirs and not names:
            with contextlib.suppress(OSError):
                os.rmdir(root)
