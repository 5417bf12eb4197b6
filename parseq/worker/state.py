"""A parser's state shared by every machine: a run holds it, and a reset empties it.

Before a run, its worker takes the parser's state lease (:mod:`parseq.state_lease`) and brings
its local copy of the state folder up to the stored one (:mod:`parseq.state_sync`); after the
run, it commits what changed and lets the lease go. Runs of one parser therefore take turns
with its state, whichever machines they run on, and never lose each other's updates.

A run that finds the lease held waits, showing who holds it in its progress message. A worker
thread waits at most ``state_wait_s``; then the run goes back to the queue (``pending``, the
thread free for other runs) and tries again later. A run that has waited ``state_max_wait_s``
since it was queued fails, naming the holder. Waiting runs hold no lease, so nothing waits in
a circle; with the default overlap policy (``skip``) a waiting run also keeps the scheduler
from queueing more runs of its parser.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.orm.attributes import set_committed_value

from parseq.core.config import Config
from parseq.core.errors import BrokerError, RunFailed, StateBusy, StorageError
from parseq.db import state_leases as state_lease
from parseq.db.models import Run, RunStatus, db, utcnow
from parseq.db.reconnect import retry_db
from parseq.queue.broker import send_run
from parseq.sandbox import limits as sandbox
from parseq.storage import state_commit, state_sync
from parseq.storage.base import Storage
from parseq.worker.watchdog import Watchdog

log = logging.getLogger(__name__)

#: The first pause between two tries at a busy lease, and the longest, in seconds.
POLL_FIRST_S = 0.1
POLL_MAX_S = 1.0
#: How a waiting run's progress message starts.
WAITING = "waiting for the parser's state"
#: A run sent back to the queue tries again after at least this long, in seconds.
REQUEUE_MIN_S = 1.0


@dataclass
class HeldState:
    """A run's hold on its parser's state: the folder is up to date and, for a parser with
    state, the lease renewed. Without state (``keeper`` None) the lease is taken only if the
    run made some, to commit it."""

    app: Flask
    config: Config
    storage: Storage
    run_id: int
    parser_id: int
    state_dir: Path
    base: state_sync.Manifest
    keeper: state_lease.Keeper | None
    owner: state_sync.Owner | None = None

    def commit(self) -> list[str]:
        """Store what the run changed; return the warnings the run gets (never raises: a
        state that could not be stored stays here, and this machine's next run stores it)."""
        if self.keeper is None and not state_commit.has_changes(self.state_dir, self.base):
            return []  # a parser without state that made none: nothing to store
        with Watchdog(self.app, self.run_id, self.config.heartbeat_interval_s):
            if self.keeper is None and not self._lease_to_commit():
                return [
                    "parser state not saved yet: another run held it for longer than "
                    "PARSEQ_STATE_WAIT_S; the next run on this worker saves it"
                ]
            return self._commit(self.keeper) if self.keeper is not None else []

    def _lease_to_commit(self) -> bool:
        """Take the lease for a run that started without state and made some, then bring in
        what other runs stored meanwhile (``state.json`` merged key by key)."""
        engine, token, config = db.engine, state_lease.new_token(), self.config
        deadline, pause_s = time.monotonic() + config.state_wait_s, POLL_FIRST_S
        while True:
            taken = retry_db(
                lambda: state_lease.try_acquire(
                    engine, self.parser_id, token, config.state_lease_ttl_s, self.run_id, "commit"
                ),
                config.db_retry_s,
                "state lease",
            )
            if isinstance(taken, state_lease.Taken):
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, POLL_MAX_S)
        self.keeper = state_lease.Keeper(engine, self.parser_id, token, config.state_lease_ttl_s)
        try:
            self.base = state_sync.materialize(
                self.storage, self.parser_id, self.state_dir, self.owner, taken.version
            ).base
        except Exception as exc:
            log.warning("run %s: stored parser state not readable: %s", self.run_id, exc)
            return False
        return True

    def _commit(self, keeper: state_lease.Keeper) -> list[str]:
        config, last = self.config, None
        for attempt in range(config.upload_attempts):
            if attempt:
                time.sleep(config.upload_backoff_s * 2 ** (attempt - 1))
            try:
                done = state_commit.commit(
                    self.storage,
                    self.parser_id,
                    self.state_dir,
                    self.base,
                    config.state_max_bytes,
                    scratch=config.state_dir,
                    publish=keeper.still_held,
                )
                break
            except StateBusy:
                return [
                    "parser state not saved: its lease could not be confirmed (expired "
                    "while the run went on, or the database was unreachable)"
                ]
            except Exception as exc:
                last = exc
        else:
            log.warning("run %s: parser state not saved: %s", self.run_id, last)
            return [f"parser state not saved ({last}); the next run on this worker saves it"]
        if done.evicted:
            log.info("run %s: %d page-cache file(s) evicted", self.run_id, len(done.evicted))
        if done.over_cap_bytes:
            return [
                f"parser state is {done.over_cap_bytes} bytes over PARSEQ_STATE_MAX_BYTES "
                "with its page cache evicted; kept whole"
            ]
        return []

    def release(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()


@contextlib.contextmanager
def held(run: Run, config: Config, state_dir: Path, requeue: bool) -> Iterator[HeldState | None]:
    """Hold the run's parser state for the body (:func:`acquire`), released after it; None when
    the run went back to the queue to wait."""
    hold = acquire(run, config, state_dir, requeue)
    try:
        yield hold
    finally:
        if hold is not None:
            hold.release()


def acquire(run: Run, config: Config, state_dir: Path, requeue: bool) -> HeldState | None:
    """Take the lease of the run's parser (waiting as the module says) and materialize the
    state into ``state_dir``. None: the run went back to the queue (only with ``requeue``: a
    worker consuming the broker will take it again). Raises :class:`StateBusy` past
    ``state_max_wait_s`` and :class:`StorageError` when the state cannot be loaded."""
    engine, token = db.engine, state_lease.new_token()
    app = current_app._get_current_object()
    storage = app.extensions["parseq"].storage
    user = sandbox.sandbox_user(config, parser_id=run.parser_id)
    owner = (user.uid, user.gid) if user is not None else None
    known = retry_db(lambda: state_lease.peek(engine, run.parser_id), config.db_retry_s, "state")
    if not known.stateful:
        # No state yet: runs need not take turns (a parser that keeps none never waits).
        base = state_sync.Manifest(state_sync.new_epoch(), 0, {})
        if known.version is not None:  # None: never stored, nothing to read
            base = _materialize(app, run, config, state_dir, owner, known.version)
        return HeldState(app, config, storage, run.id, run.parser_id, state_dir, base, None, owner)
    started, pause_s = time.monotonic(), POLL_FIRST_S
    waited = False
    while True:
        holder = retry_db(
            lambda: state_lease.try_acquire(
                engine, run.parser_id, token, config.state_lease_ttl_s, run.id, run.worker_id or ""
            ),
            config.db_retry_s,
            "state lease",
        )
        if isinstance(holder, state_lease.Taken):
            break
        message = f"{WAITING}, held by {holder.describe()}"
        if (utcnow() - run.queued_at).total_seconds() > config.state_max_wait_s:
            raise StateBusy(
                f"gave up after {config.state_max_wait_s:g} s {message}",
                holder_run_id=holder.run_id,
            )
        if requeue and time.monotonic() - started >= config.state_wait_s:
            _send_back(run, message, max(config.state_wait_s, REQUEUE_MIN_S))
            return None
        retry_db(lambda text=message: _show(run, text), config.db_retry_s, "state wait")
        waited = True
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, POLL_MAX_S)
    if waited or (run.progress_message or "").startswith(WAITING):
        retry_db(
            lambda: _show(run, None), config.db_retry_s
        )  # waited, here or in the queue: the parser's progress comes next
    keeper = state_lease.Keeper(engine, run.parser_id, token, config.state_lease_ttl_s)
    try:
        base = _materialize(app, run, config, state_dir, owner, holder.version)
    except StorageError:
        keeper.stop()
        raise
    return HeldState(app, config, storage, run.id, run.parser_id, state_dir, base, keeper, owner)


def _materialize(
    app: Flask,
    run: Run,
    config: Config,
    state_dir: Path,
    owner: state_sync.Owner | None,
    version: str | None,
) -> state_sync.Manifest:
    """Materialize the state (the run's heartbeat going); its base manifest."""
    storage = app.extensions["parseq"].storage
    try:
        with Watchdog(app, run.id, config.heartbeat_interval_s):
            return state_sync.materialize(storage, run.parser_id, state_dir, owner, version).base
    except Exception as exc:
        raise StorageError(f"could not load the parser's state: {exc}", run_id=run.id) from exc


def _show(run: Run, message: str | None) -> None:
    """Set the waiting run's progress message (and heartbeat); a run cancelled meanwhile ends."""
    now = utcnow()
    done = db.session.execute(
        sa.update(Run)
        .where(Run.id == run.id, Run.status == RunStatus.RUNNING)
        .values(progress_message=message, heartbeat_at=now)
    ).rowcount
    db.session.commit()
    if not done:
        raise RunFailed("cancelled while waiting for the parser's state", run_id=run.id)
    set_committed_value(run, "progress_message", message)


def _send_back(run: Run, message: str, delay_s: float) -> None:
    """Return the claimed run to ``pending`` for ``delay_s`` and re-send its message. A send
    that fails leaves it unsent, which the sweeper re-sends."""
    done = db.session.execute(
        sa.update(Run)
        .where(Run.id == run.id, Run.status == RunStatus.RUNNING)
        .values(
            status=RunStatus.PENDING,
            progress_message=message,
            started_at=None,
            heartbeat_at=None,
            worker_id=None,
            enqueued_at=None,
            not_before=utcnow() + timedelta(seconds=delay_s),
        )
    ).rowcount
    db.session.commit()
    if not done:
        raise RunFailed("cancelled while waiting for the parser's state", run_id=run.id)
    log.info("run %s waits %.1f s more: %s", run.id, delay_s, message)
    try:
        send_run(run.id, delay_s=delay_s)
    except BrokerError:
        return
    with db.engine.begin() as conn:
        conn.execute(sa.update(Run).where(Run.id == run.id).values(enqueued_at=utcnow()))
