"""The schema as db.create_all() made it before Parseq had migrations (the baseline).

Revision ID: 0001
Revises:
Create Date: 2026-11-23 14:54:44.822216
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # In dependency order: a table's foreign keys point at tables made before it.
    _create_api_tokens()
    _create_parsers()
    _create_users()
    _create_workers()
    _create_runs()
    _create_schedule_skips()
    _create_run_files()


def _create_api_tokens() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )


def _create_parsers() -> None:
    op.create_table(
        "parsers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("script", "notebook", name="parserkind", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("requirements", sa.Text(), nullable=False),
        sa.Column("default_args", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.Text(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retry_on_timeout", sa.Boolean(), nullable=False),
        sa.Column("max_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_cpu_s", sa.Float(), nullable=True),
        sa.Column("max_processes", sa.Integer(), nullable=True),
        sa.Column("max_file_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_open_files", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "schedule_type",
            sa.Enum("cron", "interval", "date", name="scheduletype", native_enum=False, length=16),
            nullable=True,
        ),
        sa.Column("cron", sa.String(length=120), nullable=True),
        sa.Column("interval_s", sa.Integer(), nullable=True),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("schedule_start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("schedule_end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column(
            "overlap",
            sa.Enum("skip", "allow", name="overlappolicy", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def _create_users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )


def _create_workers() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def _create_runs() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parser_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "running",
                "completed",
                "error",
                "timeout",
                "cancelled",
                name="runstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "trigger",
            sa.Enum("manual", "schedule", "api", name="runtrigger", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("retry_of_id", sa.Integer(), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("progress_done", sa.Double(), nullable=True),
        sa.Column("progress_total", sa.Double(), nullable=True),
        sa.Column("progress_message", sa.String(length=500), nullable=True),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("env_key", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["parser_id"], ["parsers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["retry_of_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("parser_id", "scheduled_for", name="uq_runs_parser_id_scheduled_for"),
    )
    op.create_index("ix_runs_parser_id_id", "runs", ["parser_id", "id"], unique=False)
    op.create_index("ix_runs_queued_at", "runs", ["queued_at"], unique=False)
    op.create_index(op.f("ix_runs_retry_of_id"), "runs", ["retry_of_id"], unique=False)
    op.create_index("ix_runs_status_id", "runs", ["status", "id"], unique=False)


def _create_schedule_skips() -> None:
    op.create_table(
        "schedule_skips",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parser_id", sa.Integer(), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["parser_id"], ["parsers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("parser_id", "scheduled_for"),
    )


def _create_run_files() -> None:
    op.create_table(
        "run_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("run_files")
    op.drop_table("schedule_skips")
    op.drop_index("ix_runs_status_id", table_name="runs")
    op.drop_index(op.f("ix_runs_retry_of_id"), table_name="runs")
    op.drop_index("ix_runs_queued_at", table_name="runs")
    op.drop_index("ix_runs_parser_id_id", table_name="runs")
    op.drop_table("runs")
    op.drop_table("workers")
    op.drop_table("users")
    op.drop_table("parsers")
    op.drop_table("api_tokens")
