"""Result uploads that survive a storage outage.

A run's files are uploaded with a few retries (``upload_attempts``, ``upload_backoff_s``). If
storage is still down, the files stay in the run's working folder with an
``upload_pending.json`` marker holding the run's outcome; the run stays ``running`` with a
progress message saying it waits for storage (never ``completed`` with files missing). Every
worker process runs :func:`retry_pending` every ``retry_interval_s`` (``actors.Housekeeping``),
heartbeating the runs meanwhile, and finishes each run once all its files are stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from parseq.core.config import Config
from parseq.core.errors import NotFound, StorageError
from parseq.core.pools import ForkSafeThreadPool
from parseq.db.models import Run, RunFile, RunStatus, db
from parseq.services import recording
from parseq.services.recording import Pending, StoredFile
from parseq.storage.base import Storage

log = logging.getLogger(__name__)

MARKER = "upload_pending.json"
LOCK = ".upload.lock"


#: Upload threads per worker process at most (boto3 clients are thread-safe); started as
#: needed, so a few runs uploading at once cost a few.
UPLOAD_THREADS = 32
#: The upload threads of this process, shared by its runs (not started per run).
_UPLOADS = ForkSafeThreadPool(UPLOAD_THREADS, "parseq-upload")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload_files(
    storage: Storage,
    run_id: int,
    files: Mapping[str, Path],
    attempts: int = 1,
    backoff_s: float = 1.0,
) -> list[StoredFile]:
    """Upload each file under ``runs/<id>/``, each tried ``attempts`` times with doubling
    pauses; raise the last :class:`StorageError` when a file cannot be stored. Files go up
    in parallel: a run's few small files cost one round trip instead of one each."""

    def upload(name: str, path: Path, size: int) -> StoredFile:
        key = f"runs/{run_id}/{name}"
        # An empty file is recorded but needs no object: downloads serve it empty.
        for attempt in range(1, attempts + 1) if size else ():
            try:
                storage.put(key, path)
                break
            except StorageError as exc:
                if attempt == attempts:
                    raise
                delay = backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "run %s: upload of %s failed (%s); retry in %.1f s", run_id, name, exc, delay
                )
                time.sleep(delay)
        return StoredFile(name, size, sha256(path), key)

    jobs = [(name, path, path.stat().st_size) for name, path in files.items()]
    # Every file to store but one goes up on the shared threads, that one on this thread.
    to_store = [i for i, (_, _, size) in enumerate(jobs) if size]
    futures = {i: _UPLOADS.submit(upload, *jobs[i]) for i in to_store[1:]}
    done = {i: upload(*job) for i, job in enumerate(jobs) if i not in futures}
    # In order; the first failure is raised.
    return [done[i] if i in done else futures[i].result() for i in range(len(jobs))]


def defer(workdir: Path, pending: Pending) -> None:
    """Leave the marker that makes the files wait in ``workdir`` for a retry."""
    tmp = workdir / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(asdict(pending)))
    tmp.replace(workdir / MARKER)


def relative_files(workdir: Path, files: Mapping[str, Path]) -> dict[str, str]:
    return {name: path.relative_to(workdir).as_posix() for name, path in files.items()}


def is_pending(workdir: Path) -> bool:
    return (workdir / MARKER).exists()


def waiting_message(error: object, attempts: int) -> str:
    return (
        f"waiting for storage: files kept on the worker, upload retried (attempt {attempts}): "
        f"{error}"
    )[:500]


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[bool]:
    """An exclusive lock on the run's folder, so two worker processes sharing ``var/`` never
    retry the same run at once; yields False when another holds it."""
    with (workdir / LOCK).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retry_pending(app: Flask) -> int:
    """One pass over the runs waiting for storage; returns how many got finished."""
    state = app.extensions["parseq"]
    config = state.config
    finished = 0
    for marker in sorted(config.runs_dir.glob(f"*/{MARKER}")):
        workdir = marker.parent
        with _locked(workdir) as mine:
            if not mine or not marker.exists():
                continue
            data: dict[str, Any] = json.loads(marker.read_text())
            pending = Pending(**{**data, "attempts": data.get("attempts", 0) + 1})
            files = {name: workdir / rel for name, rel in pending.files.items()}
            try:
                stored = upload_files(state.storage, pending.run_id, files)
            except StorageError as exc:
                defer(workdir, pending)
                recording.mark_waiting(pending.run_id, waiting_message(exc, pending.attempts))
                continue
            try:
                recording.record_files_and_finish(pending.run_id, stored, pending)
            except NotFound:  # deleted with its parser meanwhile; its objects went with it
                log.info("run %s was deleted while its files waited", pending.run_id)
            marker.unlink()
        if not config.keep_workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        log.info("run %s: files stored after %d retries", pending.run_id, pending.attempts)
        finished += 1
    return finished


def store_and_finish(
    config: Config, workdir: Path, files: Mapping[str, Path], pending: Pending
) -> RunStatus:
    """Upload the files, then record them with the run's final status in one transaction. If
    storage stays down, the run stays ``running`` and waits for the worker's upload retrier."""
    storage = current_app.extensions["parseq"].storage
    try:
        stored = upload_files(
            storage, pending.run_id, files, config.upload_attempts, config.upload_backoff_s
        )
    except StorageError as exc:
        defer(workdir, pending)
        log.warning(
            "run %s: storage unreachable, files kept in %s: %s", pending.run_id, workdir, exc
        )
        recording.mark_waiting(pending.run_id, waiting_message(exc, config.upload_attempts))
        return RunStatus.RUNNING
    return recording.record_files_and_finish(pending.run_id, stored, pending)


def store_files(run: Run, files: Mapping[str, Path]) -> None:
    """Upload each file under ``runs/<id>/`` and record its size and sha256 on the run."""
    config: Config = current_app.extensions["parseq"].config
    storage = current_app.extensions["parseq"].storage
    stored = upload_files(storage, run.id, files, config.upload_attempts, config.upload_backoff_s)
    for f in stored:
        run.files.append(
            RunFile(name=f.name, size=f.size, sha256=f.sha256, storage_key=f.storage_key)
        )
    db.session.commit()
