"""Parser code versions (issue #21): the code_versions table, the parser's current version and
the version each run ran. Existing parsers keep running their files until the start-up sync
(``parseq init-db``, ``parseq up``) stores them as version 1.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "code_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parser_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requirements_in", sa.Text(), nullable=False),
        sa.Column("requirements_lock", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["parser_id"], ["parsers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("parser_id", "number", name="uq_code_versions_number"),
    )
    with op.batch_alter_table("parsers") as batch:
        batch.add_column(sa.Column("code_version", sa.Integer(), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("code_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("code_version")
    with op.batch_alter_table("parsers") as batch:
        batch.drop_column("code_version")
    op.drop_table("code_versions")
