"""PostgreSQL advisory lock keys: every lock Parseq takes, in one place.

Advisory locks are per database and keyed by one bigint. Parseq's keys share one namespace,
"parseq" in ASCII shifted left by a byte (``0x706172736571_00``), and differ in the low byte, so
they never collide with each other and are unlikely to collide with another application's on
the same database. A new lock takes the next free low byte here, never a number of its own.

Releases before this module used ``0x706172736571`` for both the migration and the scheduler
lock: a running scheduler held it for its whole life and every migrating command waited on it
forever. Do not reuse that value.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

NAMESPACE = 0x706172736571 << 8
#: Held while a process migrates the schema (``parseq.db.migrate``); skipped when it is at head.
MIGRATION = NAMESPACE | 0x01
#: Held by the active scheduler for as long as it is active
#: (``parseq.scheduler.service.LeaderLock``).
SCHEDULER_LEADER = NAMESPACE | 0x02


@dataclass(frozen=True)
class Holder:
    """A PostgreSQL session holding an advisory lock, as ``pg_stat_activity`` shows it."""

    pid: int
    application_name: str
    client: str

    def __str__(self) -> str:
        name = f"'{self.application_name}'" if self.application_name else "(no application name)"
        return f"pid {self.pid} {name} from {self.client}"


def holders(conn: sa.Connection, key: int) -> list[Holder]:
    """The sessions holding advisory lock ``key`` on ``conn``'s database (PostgreSQL only)."""
    # pg_locks splits a bigint key into classid (high 32 bits) and objid (low); objsubid 1.
    rows = conn.execute(
        sa.text(
            "SELECT a.pid, a.application_name, host(a.client_addr) AS client "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = :hi AND l.objid::bigint = :lo "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY a.pid"
        ),
        {"hi": key >> 32, "lo": key & 0xFFFFFFFF},
    )
    return [Holder(r.pid, r.application_name or "", r.client or "a local socket") for r in rows]
