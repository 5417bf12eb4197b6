"""Per-parser state leases (parser state shared through storage, issue #21).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "state_leases",
        sa.Column("parser_id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("holder", sa.String(length=160), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("stateful", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(["parser_id"], ["parsers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("parser_id"),
    )


def downgrade() -> None:
    op.drop_table("state_leases")
