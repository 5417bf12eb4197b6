"""The database: tables (one module per entity; ``db.models`` imports them all), column types,
secrets encrypted at rest, reconnects, advisory locks and the Alembic migrations.

May import: ``parseq.core``.
"""
