"""Storing a run's changes to its parser's state (:mod:`parseq.storage.state_sync` has the
layout and the materialize side): an incremental commit by content hash, the size cap
(page-cache entries evicted oldest first), batched deletion of unused contents, and the reset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from parseq.core.errors import StateBusy
from parseq.storage.base import Storage
from parseq.storage.state_sync import (
    CACHE_DIR,
    Files,
    Manifest,
    blob_key,
    manifest_key,
    new_epoch,
    prune_empty_dirs,
    put_bytes,
    read_manifest,
    read_record,
    scan,
    write_manifest,
    write_record,
)

log = logging.getLogger(__name__)

#: Unused contents are deleted once this many have gathered.
GC_BATCH = 32
#: Uploads and deletes of one commit run on up to this many threads.
TRANSFER_THREADS = 8


@dataclass
class Committed:
    """The outcome of :func:`commit`."""

    manifest: Manifest
    uploaded: int = 0
    deleted: int = 0
    evicted: list[str] = field(default_factory=list)
    #: Bytes the state still holds over the cap once the page cache is gone (kept: only the
    #: page cache is evicted, never ``state.json`` or a checkpoint).
    over_cap_bytes: int = 0


def commit(
    storage: Storage,
    parser_id: int,
    state_dir: Path,
    base: Manifest,
    max_bytes: int = 0,
    scratch: Path | None = None,
    publish: Callable[[str, bool], bool] | None = None,
) -> Committed:
    """Store what the run left in the folder: evict page-cache entries oldest-first past
    ``max_bytes`` (0 = no cap), upload contents ``base`` lacks, write the manifest, then delete
    the contents no file uses any more. Nothing changed: no request at all. ``publish`` is
    called with the new manifest's version just before it is written; False (the lease was
    lost) stops the commit with :class:`StateBusy`, the old manifest untouched."""
    record = read_record(state_dir)
    files = scan(state_dir, record.files if record else None)
    evicted, over = evict(state_dir, files, max_bytes) if max_bytes else ([], 0)
    result = Committed(base, evicted=evicted, over_cap_bytes=over)
    if {p: f["sha256"] for p, f in files.items()} == {
        p: f["sha256"] for p, f in base.files.items()
    }:
        write_record(state_dir, Manifest(base.epoch, base.generation, files, base.garbage))
        return result
    stored = base.stored()
    new = {e["sha256"]: path for path, e in files.items() if e["sha256"] not in stored}
    used = {f["sha256"] for f in files.values()}
    garbage = sorted((stored | set(new)) - used)
    collect = len(garbage) >= GC_BATCH
    manifest = Manifest(
        base.epoch or new_epoch(), base.generation + 1, files, [] if collect else garbage
    )
    # The version is published while the contents go up (two round trips at once): published
    # early, a commit that then fails only makes the next run read the manifest.
    with ThreadPoolExecutor(1) as pool:
        stateful = bool(files)
        held = pool.submit(publish, manifest.version, stateful) if publish is not None else None
        _each(lambda sha: storage.put(blob_key(parser_id, sha), state_dir / new[sha]), new)
        if held is not None and not held.result():
            raise StateBusy(
                "the parser's state lease was lost before its commit", parser_id=parser_id
            )
    result.uploaded = len(new)
    data = manifest.to_json()
    put_bytes(storage, manifest_key(parser_id), data, scratch or state_dir.parent)
    write_record(state_dir, manifest, data)
    result.manifest = manifest
    if collect:  # the manifest no longer lists them: deleted or not, they are forgotten
        result.deleted = _delete_blobs(storage, parser_id, garbage)
    return result


def _each(call: Callable[[str], None], items: Iterable[str]) -> None:
    """``call`` each item, on threads when there are several (storage round trips)."""
    items = list(items)
    if len(items) <= 1:
        for item in items:
            call(item)
        return
    with ThreadPoolExecutor(min(TRANSFER_THREADS, len(items))) as pool:
        list(pool.map(call, items))


def _delete_blobs(storage: Storage, parser_id: int, shas: Iterable[str]) -> int:
    """Delete contents; return how many went (an orphan left costs space, never state)."""
    deleted: list[str] = []

    def delete(sha: str) -> None:
        try:
            storage.delete(blob_key(parser_id, sha))
            deleted.append(sha)
        except Exception:
            log.warning("state of parser %s: could not delete content %s", parser_id, sha)

    _each(delete, shas)
    return len(deleted)


def has_changes(state_dir: Path, base: Manifest) -> bool:
    """Whether the run changed the folder since ``base`` (a run without state that made none
    needs no commit, nor the lease)."""
    record = read_record(state_dir)
    files = scan(state_dir, record.files if record else None)
    return {p: f["sha256"] for p, f in files.items()} != {
        p: f["sha256"] for p, f in base.files.items()
    }


def evict(state_dir: Path, files: Files, max_bytes: int) -> tuple[list[str], int]:
    """Delete page-cache entries (an entry's ``.json`` and ``.body`` together), oldest first,
    until the folder's files fit in ``max_bytes``; return the paths deleted and the bytes still
    over the cap. ``files`` is updated in place."""
    total = sum(int(f["size"]) for f in files.values())
    if total <= max_bytes:
        return [], 0
    entries: dict[str, list[str]] = {}
    for path in files:
        if path.startswith(CACHE_DIR + "/"):
            entries.setdefault(path.rsplit(".", 1)[0], []).append(path)
    by_age = sorted(entries.values(), key=lambda ps: max(files[p]["mtime_ns"] for p in ps))
    evicted: list[str] = []
    for paths in by_age:
        if total <= max_bytes:
            break
        for path in paths:
            (state_dir / path).unlink(missing_ok=True)
            total -= int(files.pop(path)["size"])
            evicted.append(path)
    prune_empty_dirs(state_dir)
    return evicted, max(total - max_bytes, 0)


def reset_stored(
    storage: Storage,
    parser_id: int,
    scratch: Path,
    publish: Callable[[str, bool], bool] | None = None,
) -> Manifest:
    """Empty a parser's stored state: an empty manifest of a new epoch (every machine then
    drops its copy on its next run), then its contents go. ``publish`` as for :func:`commit`."""
    old = read_manifest(storage, parser_id)
    manifest = Manifest(new_epoch(), (old.generation if old else 0) + 1, {})
    if publish is not None and not publish(manifest.version, False):
        raise StateBusy("the parser's state lease was lost before its reset", parser_id=parser_id)
    write_manifest(storage, parser_id, manifest, scratch)
    _delete_contents(storage, parser_id, old)
    return manifest


def drop_stored(storage: Storage, parser_id: int) -> None:
    """Delete a parser's stored state altogether (the parser is gone)."""
    old = read_manifest(storage, parser_id)
    storage.delete(manifest_key(parser_id))
    _delete_contents(storage, parser_id, old)


def _delete_contents(storage: Storage, parser_id: int, manifest: Manifest | None) -> None:
    if manifest is not None:
        _delete_blobs(storage, parser_id, manifest.stored())
