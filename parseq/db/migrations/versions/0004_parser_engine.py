"""Notebook parsers get an engine: ``fast`` (kernel-free, the default) or ``kernel``.

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-03 09:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parsers") as batch:
        batch.add_column(
            sa.Column(
                "engine",
                sa.Enum("fast", "kernel", name="notebookengine", native_enum=False, length=16),
                nullable=False,
                server_default="fast",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("parsers") as batch:
        batch.drop_column("engine")
