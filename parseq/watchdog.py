"""The watchdog beside a running run: heartbeats, progress pick-up and cancel requests."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask import Flask

from parseq import sdk
from parseq.models import Run, RunStatus, db, utcnow
from parseq.redaction import redact_text

log = logging.getLogger(__name__)


class Watchdog(threading.Thread):
    """Beside a running run: records its heartbeat and notices a cancel request.

    Works in its own app context, so in its own database session.
    """

    def __init__(
        self,
        app: Flask,
        run_id: int,
        interval_s: float,
        progress_file: Path | None = None,
        secrets: Iterable[str] = (),
        extra_values: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name=f"watchdog-{run_id}", daemon=True)
        self.app = app
        self.run_id = run_id
        self.interval_s = interval_s
        self.progress_file = progress_file
        self.secrets = tuple(secrets)
        self._progress_mtime: int | None = None
        #: Columns the next successful beat writes too (the run's env key): a short run is
        #: spared the write, its end records them (``execution._finish``).
        self._extra_values = dict(extra_values or {})
        self.cancel = threading.Event()
        self._stopped = threading.Event()

    def run(self) -> None:
        with self.app.app_context():
            while not self._stopped.wait(self.interval_s):
                try:
                    self.beat()
                except Exception:  # the database may blip; the run goes on
                    log.exception("heartbeat of run %s failed", self.run_id)
                    db.session.rollback()

    def beat(self) -> None:
        values: dict[str, Any] = {"heartbeat_at": utcnow(), **self._extra_values}
        values.update(self._new_progress())
        result = db.session.execute(
            db.update(Run)
            .where(Run.id == self.run_id, Run.status == RunStatus.RUNNING)
            .values(**values)
        )
        db.session.commit()
        self._extra_values = {}
        if result.rowcount == 0:
            status = db.session.execute(db.select(Run.status).where(Run.id == self.run_id)).scalar()
            if status is None or status.is_final:
                # Cancelled, or taken as lost by the reaper (this worker stalled): stop it.
                log.info("run %s is %s elsewhere: stopping it", self.run_id, status)
                self.cancel.set()

    def _new_progress(self) -> dict[str, Any]:
        """The progress columns, when the parser reported since the last beat."""
        if self.progress_file is None:
            return {}
        try:
            mtime = self.progress_file.stat().st_mtime_ns
        except OSError:
            return {}
        if mtime == self._progress_mtime:
            return {}
        self._progress_mtime = mtime
        return redacted_progress(sdk.progress_columns(self.progress_file), self.secrets)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def record_progress(run: Run, progress_file: Path, secrets: Iterable[str] = ()) -> None:
    """The parser's last report, which it may have made after the last heartbeat."""
    for name, value in redacted_progress(sdk.progress_columns(progress_file), secrets).items():
        setattr(run, name, value)
    db.session.commit()


def redacted_progress(columns: dict[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """Progress columns with secret values masked in the message."""
    if columns.get("progress_message"):
        columns["progress_message"] = redact_text(columns["progress_message"], secrets)
    return columns
