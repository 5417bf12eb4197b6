"""Live logs: what a running parser printed so far, from any web process.

The log travels through the database: at each heartbeat the worker copies what its run's log
file gained (already redacted by the supervisor) into ``run_log_chunks``, in the heartbeat's
own transaction, up to ``PARSEQ_LIVE_LOG_MAX_BYTES``. The database is the one thing every
web process and every worker machine shares already (storage keeps whole objects only, the
broker delivers each message to one consumer); one heartbeat a second makes a small insert at
most. Once the run has ended, its stored ``run.log`` takes over and the chunks are deleted
(:func:`forget`, by the run's end notification).
"""

from __future__ import annotations

from pathlib import Path

from flask import current_app

from parseq.db.models import Run, db
from parseq.db.notify_models import RunLogChunk
from parseq.db.runs import LOG_FILE

TRUNCATED = b"\n[parseq: live log cut at %d bytes; the stored log has the rest]\n"


class Capture:
    """Copies a run's log file into the database, a chunk per heartbeat (``watchdog.beat``)."""

    def __init__(self, log_path: Path, max_bytes: int) -> None:
        self.log_path = log_path
        self.max_bytes = max_bytes
        self.offset = 0
        self.cut = False

    def flush(self, run_id: int) -> None:
        """Add what the log gained since the last call to the session (the caller commits)."""
        if self.cut:
            return
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(max(self.max_bytes - self.offset, 0) + 1)
        except OSError:
            return
        if not data:
            return
        if self.offset + len(data) > self.max_bytes:
            data = data[: self.max_bytes - self.offset] + TRUNCATED % self.max_bytes
            self.cut = True
        db.session.add(RunLogChunk(run_id=run_id, start=self.offset, data=data))
        self.offset += len(data)


def forget(run_id: int) -> None:
    """Delete a run's chunks (its log is stored now), in the session's transaction."""
    db.session.execute(db.delete(RunLogChunk).where(RunLogChunk.run_id == run_id))


def read(run: Run, offset: int = 0) -> tuple[bytes, int]:
    """The log from ``offset`` and the offset to read on from: the stored log once the run
    has ended (capped at ``PARSEQ_LIVE_LOG_MAX_BYTES``), the live chunks before."""
    stored = run.file(LOG_FILE)
    if not run.status.is_final or stored is None:
        chunks = db.session.execute(
            db.select(RunLogChunk.start, RunLogChunk.data)
            .where(RunLogChunk.run_id == run.id, RunLogChunk.start + _len() > offset)
            .order_by(RunLogChunk.start)
        ).all()
        if not chunks:
            return b"", offset
        data = b"".join(chunk for _start, chunk in chunks)[max(offset - chunks[0][0], 0) :]
        return data, offset + len(data)
    if stored.size <= offset:
        return b"", offset
    limit = current_app.extensions["parseq"].config.live_log_max_bytes
    storage = current_app.extensions["parseq"].storage
    data = b""
    for piece in storage.iter_bytes(stored.storage_key):
        data += piece
        if len(data) >= offset + limit:
            break
    data = data[offset : offset + limit]
    return data, offset + len(data)


def _len() -> object:
    return db.func.length(RunLogChunk.data)


def tail(run: Run, max_bytes: int = 64 * 1024) -> str:
    """The last ``max_bytes`` of a running run's live log, as text (the admin's run page)."""
    data, _end = read(run)
    return data[-max_bytes:].decode("utf-8", "replace")
