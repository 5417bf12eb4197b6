"""Resetting a parser's shared state: the rule the admin's button and the API share.

The state itself, and how a run holds it, is :mod:`parseq.worker.state`'s.
"""

from __future__ import annotations

import logging
import shutil

from flask import current_app

from parseq.core.config import Config
from parseq.core.errors import StateBusy
from parseq.db import state_leases as state_lease
from parseq.db.models import Parser, db
from parseq.storage import state_commit, state_sync
from parseq.storage.base import Storage

log = logging.getLogger(__name__)


def reset_state(parser: Parser) -> None:
    """Empty the parser's state everywhere: in storage now, on each worker at its next run of
    the parser. Refused (:class:`StateBusy`, 409) while a run holds the state."""
    config: Config = current_app.extensions["parseq"].config
    storage: Storage = current_app.extensions["parseq"].storage
    engine, token = db.engine, state_lease.new_token()
    holder = state_lease.try_acquire(
        engine, parser.id, token, config.state_lease_ttl_s, None, "reset"
    )
    if isinstance(holder, state_lease.Holder):
        raise StateBusy(
            f"the state of parser {parser.name!r} is in use by {holder.describe()}; "
            "reset it once that run has ended",
            parser=parser.name,
            run_id=holder.run_id,
        )
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        ttl_s = config.state_lease_ttl_s
        state_commit.reset_stored(
            storage,
            parser.id,
            config.state_dir,
            publish=lambda version, _stateful: state_lease.renew(
                engine, parser.id, token, ttl_s, version, stateful=False
            ),
        )
        # This machine's copies go now (the embedded mode's only ones); others' at their next run.
        local = config.state_dir / str(parser.id)
        shutil.rmtree(local, ignore_errors=True)
        state_sync.record_path(local).unlink(missing_ok=True)
        shutil.rmtree(config.legacy_state_dir / parser.name, ignore_errors=True)
    finally:
        state_lease.release(engine, parser.id, token)
    log.info("state of parser %s reset", parser.name)
