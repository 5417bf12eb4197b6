"""Alembic's environment for Parseq, run by ``parseq.db.migrate`` (not by a bare ``alembic``):
it migrates over the connection ``parseq.db.migrate`` hands over, which already holds the lock."""

from __future__ import annotations

from alembic import context

from parseq.db.migrate import context_options

connection = context.config.attributes["connection"]
context.configure(connection=connection, **context_options(connection.dialect.name))
with context.begin_transaction():
    context.run_migrations()
