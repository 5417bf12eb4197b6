"""Heartbeats of the runs a worker process executes: progress pick-up and cancel requests.

One thread per process (and app) beats every run the process executes, with one UPDATE per
interval for all of them; a run only registers its :class:`Watchdog`, which starts no thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask import Flask

from parseq.core.redaction import redact_text
from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.services import livelog
from parseq.worker import sdk

log = logging.getLogger(__name__)


class Watchdog:
    """One run's heartbeat while started: its process's heartbeat thread records it every
    ``interval_s`` with the run's new progress, and sets ``cancel`` when the run was cancelled
    or taken as lost by the reaper (this worker stalled)."""

    def __init__(
        self,
        app: Flask,
        run_id: int,
        interval_s: float,
        progress_file: Path | None = None,
        secrets: Iterable[str] = (),
        extra_values: dict[str, Any] | None = None,
        live_log: livelog.Capture | None = None,
    ) -> None:
        self.app = app
        #: Copies the run's log into the database at each beat, for live viewing.
        self.live_log = live_log
        self.run_id = run_id
        self.interval_s = interval_s
        self.progress_file = progress_file
        self.secrets = tuple(secrets)
        self._progress_mtime: int | None = None
        #: Columns the next successful beat writes too (the run's env key): a short run is
        #: spared the write, its end records them (``recording.finish``).
        self._extra_values = dict(extra_values or {})
        self.cancel = threading.Event()
        self.due = 0.0  # time.monotonic() of the next beat
        self._beater: _Beater | None = None

    def start(self) -> None:
        key = (self.app, self.interval_s)
        self.due = time.monotonic() + self.interval_s  # as a thread of its own would beat
        with _lock:
            beater = _beaters.get(key)
            if beater is None:
                beater = _beaters[key] = _Beater(*key)
            beater.watchdogs.add(self)
        self._beater = beater

    def stop(self) -> None:
        """Beat no more; returns once a beat under way has ended (its progress is not written
        after the run's last, ``record_progress``)."""
        beater, self._beater = self._beater, None
        if beater is None:
            return
        with _lock:
            beater.watchdogs.discard(self)
        if beater.beating.acquire(timeout=5):
            beater.beating.release()

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def values(self) -> dict[str, Any]:
        """What the next beat writes besides the heartbeat."""
        return {**self._extra_values, **self._new_progress()}

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


def beat(watchdogs: list[Watchdog]) -> None:
    """Record the heartbeat of these runs, in one transaction: one UPDATE for all the runs
    with nothing else to write, one per run with progress or extra values. A run found ended
    elsewhere gets its ``cancel`` set."""
    now = utcnow()
    still_running = Run.status == RunStatus.RUNNING
    plain: list[int] = []
    beaten = 0
    for watchdog in watchdogs:
        values = watchdog.values()
        if not values:
            plain.append(watchdog.run_id)
            continue
        beaten += _update(Run.id == watchdog.run_id, still_running, heartbeat_at=now, **values)
    if plain:
        beaten += _update(Run.id.in_(plain), still_running, heartbeat_at=now)
    ended: dict[int, RunStatus | None] = {}
    if beaten < len(watchdogs):  # some are not running: cancelled, reaped, deleted
        ids = [w.run_id for w in watchdogs]
        query = db.select(Run.id, Run.status).where(Run.id.in_(ids))
        statuses: dict[int, RunStatus] = dict(db.session.execute(query).all())
        ended = {i: statuses.get(i) for i in ids if i not in statuses or statuses[i].is_final}
    db.session.commit()
    _copy_live_logs([w for w in watchdogs if w.run_id not in ended])
    for watchdog in watchdogs:
        watchdog._extra_values = {}
        if watchdog.run_id in ended:
            log.info("run %s is %s elsewhere: stopping it", watchdog.run_id, ended[watchdog.run_id])
            watchdog.cancel.set()


def _copy_live_logs(watchdogs: list[Watchdog]) -> None:
    """The runs' new log lines, in a transaction of their own: a failure costs the live view
    a chunk, never the heartbeat."""
    try:
        for watchdog in watchdogs:
            if watchdog.live_log is not None:
                watchdog.live_log.flush(watchdog.run_id)
        db.session.commit()
    except Exception:
        log.warning("live log of runs %s not copied", [w.run_id for w in watchdogs], exc_info=True)
        db.session.rollback()


def _update(*where: Any, **values: Any) -> int:
    update = db.update(Run).where(*where).values(**values)
    return db.session.execute(update.execution_options(synchronize_session=False)).rowcount


class _Beater:
    """The thread beating the runs of one app that this process executes. Each run's first
    beat comes an interval after its start (a short run is spared it); the beats due within
    half an interval go together, so runs share one beat per interval once they have had their
    first. The thread ends after an interval with no run, so an idle process (or a finished
    test's app) keeps none."""

    def __init__(self, app: Flask, interval_s: float) -> None:
        self.app = app
        self.interval_s = interval_s
        self.watchdogs: set[Watchdog] = set()  # changed under _lock
        self.beating = threading.Lock()  # held through a round of beats
        threading.Thread(target=self._loop, name="heartbeats", daemon=True).start()

    def _loop(self) -> None:
        with self.app.app_context():  # a database session of its own
            idle = False
            while True:
                with _lock:
                    if idle and not self.watchdogs:
                        _beaters.pop((self.app, self.interval_s), None)
                        return
                    idle = not self.watchdogs
                    # A run started meanwhile is due an interval after its start: not earlier.
                    wake = min((w.due for w in self.watchdogs), default=None)
                time.sleep(self.interval_s if wake is None else max(0.0, wake - time.monotonic()))
                self._beat_due()

    def _beat_due(self) -> None:
        with self.beating:
            now = time.monotonic()
            with _lock:
                due = [w for w in self.watchdogs if w.due <= now + self.interval_s / 2]
            if not due:
                return
            try:
                beat(due)
            except Exception:  # the database may blip; the runs go on
                log.exception("heartbeat of runs %s failed", [w.run_id for w in due])
                db.session.rollback()
            for watchdog in due:
                watchdog.due = now + self.interval_s


_lock = threading.Lock()
_beaters: dict[tuple[Flask, float], _Beater] = {}


def _forget_beaters() -> None:
    """A forked child has none of its parent's threads: it starts its own on first use."""
    global _lock
    _lock = threading.Lock()
    _beaters.clear()


os.register_at_fork(after_in_child=_forget_beaters)


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
