"""The per-parser state lease: one holder at a time may materialize, change and commit a
parser's shared state (``parseq.storage.state_sync``), so runs on different machines never lose each
other's updates.

A lease is a row per parser, taken by a conditional write and kept alive by its holder's
:class:`Keeper` thread; a holder that dies (worker killed, machine gone) stops renewing, and
the lease is free again ``state_lease_ttl_s`` after its last renewal. Each holder has a random
token, so a holder whose lease expired and was taken over cannot renew or release the new one.
The row also names the stored state's version, published by each commit before its manifest is
written: a worker that synced that version last needs nothing from storage.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from parseq.db.base import UTCDateTime, db, utcnow

log = logging.getLogger(__name__)


class StateLease(db.Model):
    """Who holds a parser's state, until when."""

    __tablename__ = "state_leases"

    parser_id: Mapped[int] = mapped_column(
        sa.ForeignKey("parsers.id", ondelete="CASCADE"), primary_key=True
    )
    #: Random per holder: only it renews or releases the lease.
    token: Mapped[str] = mapped_column(sa.String(32))
    #: The run holding it; None for a reset.
    run_id: Mapped[int | None]
    #: Who, for people: ``worker host:pid`` or ``reset``.
    holder: Mapped[str] = mapped_column(sa.String(160))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The stored manifest's version (``state_sync.Manifest.version``); None = not known.
    version: Mapped[str | None] = mapped_column(sa.String(64))
    #: The stored state has files: runs of the parser hold the lease from before they start
    #: to their commit. Without state, a run takes it only to commit what it made, if anything.
    stateful: Mapped[bool] = mapped_column(default=False, server_default=sa.false())


_leases = StateLease.__table__
#: ``expires_at`` and ``token`` of a released lease: long past, and no holder's.
RELEASED_AT = datetime(2000, 1, 1, tzinfo=timezone.utc)
NO_HOLDER = ""


@dataclass(frozen=True)
class Taken:
    """A lease just taken, with the stored state's version as the last commit published it."""

    version: str | None
    stateful: bool = False


def peek(engine: sa.Engine, parser_id: int) -> Taken:
    """The stored state's version and whether it has files, without taking the lease."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(_leases.c.version, _leases.c.stateful).where(_leases.c.parser_id == parser_id)
        ).one_or_none()
    return Taken(None) if row is None else Taken(row.version, bool(row.stateful))


@dataclass(frozen=True)
class Holder:
    """The current holder of a busy lease, to tell a waiting run (or a reset) about."""

    run_id: int | None
    holder: str
    acquired_at: datetime

    def describe(self) -> str:
        who = f"run {self.run_id} on {self.holder}" if self.run_id else self.holder
        return f"{who} since {self.acquired_at:%H:%M:%S} UTC"


def new_token() -> str:
    return secrets.token_hex(16)


def try_acquire(
    engine: sa.Engine,
    parser_id: int,
    token: str,
    ttl_s: float,
    run_id: int | None = None,
    holder: str = "",
) -> Taken | Holder:
    """Take the parser's lease if it is free or expired (or already ``token``'s): return
    :class:`Taken`, else who holds it. Each attempt commits on its own connection."""
    now = utcnow()
    values = {
        "token": token,
        "run_id": run_id,
        "holder": holder[:160],
        "acquired_at": now,
        "expires_at": now + timedelta(seconds=ttl_s),
    }
    with engine.begin() as conn:
        taken = conn.execute(
            sa.update(_leases)
            .where(
                _leases.c.parser_id == parser_id,
                sa.or_(_leases.c.expires_at < now, _leases.c.token == token),
            )
            .values(**values)
            .returning(_leases.c.version, _leases.c.stateful)
        ).first()
        if taken is not None:
            return Taken(taken.version, bool(taken.stateful))
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(_leases).values(parser_id=parser_id, **values)
        if conn.execute(insert.on_conflict_do_nothing()).rowcount:
            return Taken(None)
        row = conn.execute(
            sa.select(_leases.c.run_id, _leases.c.holder, _leases.c.acquired_at).where(
                _leases.c.parser_id == parser_id
            )
        ).one_or_none()
    if row is None:  # released between our two statements: try again
        return try_acquire(engine, parser_id, token, ttl_s, run_id, holder)
    return Holder(row.run_id, row.holder, row.acquired_at)


def renew(
    engine: sa.Engine,
    parser_id: int,
    token: str,
    ttl_s: float,
    version: str | None = None,
    stateful: bool = False,
) -> bool:
    """Push the lease's expiry ``ttl_s`` ahead (and publish ``version`` and ``stateful``, when
    a version is given); False when the lease is no longer ``token``'s."""
    values: dict[str, object] = {"expires_at": utcnow() + timedelta(seconds=ttl_s)}
    if version is not None:
        values.update(version=version, stateful=stateful)
    with engine.begin() as conn:
        return bool(
            conn.execute(
                sa.update(_leases)
                .where(_leases.c.parser_id == parser_id, _leases.c.token == token)
                .values(**values)
            ).rowcount
        )


def release(engine: sa.Engine, parser_id: int, token: str) -> None:
    """Let the lease go; the row stays, with the stored state's version."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(_leases)
            .where(_leases.c.parser_id == parser_id, _leases.c.token == token)
            .values(token=NO_HOLDER, run_id=None, expires_at=RELEASED_AT)
        )


class Keeper:
    """Renews a held lease every third of its TTL on a thread of its own, until :meth:`stop`
    (which also releases it). :attr:`lost` is set if a renewal found the lease taken over."""

    def __init__(self, engine: sa.Engine, parser_id: int, token: str, ttl_s: float) -> None:
        self.engine, self.parser_id, self.token, self.ttl_s = engine, parser_id, token, ttl_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"state-lease-{parser_id}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not renew(self.engine, self.parser_id, self.token, self.ttl_s):
                    log.warning("state lease of parser %s was lost", self.parser_id)
                    self.lost.set()
                    return
            except Exception:  # the database may be back before the lease expires
                log.warning("renewing the state lease of parser %s failed", self.parser_id)

    def still_held(self, version: str | None = None, stateful: bool = False) -> bool:
        """Renew now (publishing ``version`` and ``stateful``, when given); False when the
        lease was lost (another holder may have committed) or cannot be confirmed."""
        if self.lost.is_set():
            return False
        try:
            return renew(self.engine, self.parser_id, self.token, self.ttl_s, version, stateful)
        except Exception:
            log.warning("checking the state lease of parser %s failed", self.parser_id)
            return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            release(self.engine, self.parser_id, self.token)
        except Exception:  # it expires by itself
            log.warning("releasing the state lease of parser %s failed", self.parser_id)
