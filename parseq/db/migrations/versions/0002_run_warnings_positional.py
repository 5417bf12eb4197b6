"""Runs keep their warnings and positional arguments; parsers have default positionals.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parsers") as batch:
        batch.add_column(sa.Column("default_positional", sa.JSON(), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("positional", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("warnings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("warnings")
        batch.drop_column("positional")
    with op.batch_alter_table("parsers") as batch:
        batch.drop_column("default_positional")
