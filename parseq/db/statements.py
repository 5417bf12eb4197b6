"""The statements of a run's hot path (claim, load, record its files, finish), built once
with bound parameters, in this one place.

Every run executes each of them; building a statement (and its cache key) anew per run cost
more CPU than the rest of the claim, and a multi-row ``VALUES`` insert is compiled anew at every
execution (bench/RESULTS.md, "statements built once"). Other queries are built where they are
used.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from parseq.core.enums import RunStatus
from parseq.db.runs import Run, RunFile

_runs, _files = Run.__table__, RunFile.__table__

#: A pending, due run becomes ``running`` on this worker (``run_id``, ``due``, ``now``,
#: ``worker_id``); one row updated means claimed.
CLAIM_RUN = (
    sa.update(_runs)
    .where(
        _runs.c.id == sa.bindparam("run_id"),
        _runs.c.status == RunStatus.PENDING,
        sa.or_(_runs.c.not_before.is_(None), _runs.c.not_before <= sa.bindparam("due")),
    )
    .values(
        status=RunStatus.RUNNING,
        started_at=sa.bindparam("now", type_=_runs.c.started_at.type),
        heartbeat_at=sa.bindparam("now", type_=_runs.c.started_at.type),
        worker_id=sa.bindparam("worker_id", type_=_runs.c.worker_id.type),
    )
)
#: The claimed run with its parser (``run_id``).
LOAD_RUN = (
    sa.select(Run)
    .options(sa_orm.joinedload(Run.parser), sa_orm.joinedload(Run.code))
    .where(Run.id == sa.bindparam("run_id"))
)
#: One stored file of a run, by dialect; a file recorded already is left as it is.
INSERT_RUN_FILE = {
    "postgresql": pg_insert(_files).on_conflict_do_nothing(),
    "sqlite": sqlite_insert(_files).on_conflict_do_nothing(),
}
#: A running run's end (``run_id``, ``status``, ``exit_code``, ``error``, ``finished_at``,
#: ``env_key``); zero rows updated means it had ended already.
FINISH_RUN = (
    sa.update(_runs)
    .where(_runs.c.id == sa.bindparam("run_id"), _runs.c.status == RunStatus.RUNNING)
    .values(
        {
            **{
                name: sa.bindparam(name, type_=_runs.c[name].type)
                for name in ("status", "exit_code", "error", "finished_at")
            },
            # The run's env key when it brings one; None keeps the stored one.
            "env_key": sa.func.coalesce(
                sa.bindparam("env_key", type_=_runs.c.env_key.type), _runs.c.env_key
            ),
        }
    )
)
