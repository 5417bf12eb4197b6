"""The ``runs`` table and the files each run stored."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from parseq.core.enums import RunStatus, RunTrigger
from parseq.db.base import UTCDateTime, db, iso, str_enum, utcnow

if TYPE_CHECKING:
    from parseq.db.parsers import Parser

#: A run's own files among its results: what the parser printed, and the run log.
OUTPUT_FILE = "output.txt"
LOG_FILE = "run.log"


class Run(db.Model):
    """One execution of a parser."""

    __tablename__ = "runs"
    __table_args__ = (
        sa.Index("ix_runs_parser_id_id", "parser_id", "id"),
        sa.Index("ix_runs_status_id", "status", "id"),
        # One run per scheduled occurrence, however many schedulers race for it (NULLs differ).
        sa.UniqueConstraint("parser_id", "scheduled_for", name="uq_runs_parser_id_scheduled_for"),
        sa.Index("ix_runs_queued_at", "queued_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    parser_id: Mapped[int] = mapped_column(sa.ForeignKey("parsers.id", ondelete="CASCADE"))
    status: Mapped[RunStatus] = mapped_column(str_enum(RunStatus), default=RunStatus.PENDING)
    trigger: Mapped[RunTrigger] = mapped_column(str_enum(RunTrigger), default=RunTrigger.MANUAL)
    args: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    attempt: Mapped[int] = mapped_column(default=1)
    #: The failed run this one retries (attempt - 1), if any.
    retry_of_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("runs.id", ondelete="SET NULL"), index=True
    )
    #: A retry waits for its backoff: workers do not start it before this time.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The due time of the schedule occurrence that created it (trigger ``schedule`` only).
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the broker last accepted its message; None = never (the sweeper re-sends it).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    progress_done: Mapped[float | None]
    progress_total: Mapped[float | None]
    progress_message: Mapped[str | None] = mapped_column(sa.String(500))
    worker_id: Mapped[str | None] = mapped_column(sa.String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    env_key: Mapped[str | None] = mapped_column(sa.String(64))
    #: Positional arguments, after the options in argv.
    positional: Mapped[list[Any] | None] = mapped_column(sa.JSON, default=list)
    #: What the run should tell its user: files not stored or renamed, no result at all.
    warnings: Mapped[list[str] | None] = mapped_column(sa.JSON)
    #: The parser's code version when the run was created (what it runs); None for a parser
    #: with no stored code (it runs the file on the worker's disk).
    code_version: Mapped[int | None]

    parser: Mapped[Parser] = relationship(back_populates="runs")
    #: The row of ``code_version`` (``parseq.db.code_models``), loaded with the run by workers.
    code: Mapped[Any] = relationship(
        "CodeVersion",
        primaryjoin="and_(foreign(Run.parser_id) == CodeVersion.parser_id, "
        "foreign(Run.code_version) == CodeVersion.number)",
        viewonly=True,
        uselist=False,
    )
    retry_of: Mapped[Run | None] = relationship(remote_side=[id])
    files: Mapped[list[RunFile]] = relationship(
        back_populates="run",
        cascade="all, delete-orphan",
        order_by="RunFile.name",
        passive_deletes=True,
    )

    def __str__(self) -> str:
        return f"run {self.id}"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return round((end - self.started_at).total_seconds(), 3)

    def file(self, name: str) -> RunFile | None:
        return next((f for f in self.files if f.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The run as the API shows it."""
        return {
            "id": self.id,
            "parser": self.parser.name,
            "status": self.status.value,
            "trigger": self.trigger.value,
            "args": self.args or {},
            "positional": self.positional or [],
            "attempt": self.attempt,
            "retry_of": self.retry_of_id,
            "previous_error": self.retry_of.error if self.retry_of else None,
            "not_before": iso(self.not_before),
            "queued_at": iso(self.queued_at),
            "scheduled_for": iso(self.scheduled_for),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_s": self.duration_s,
            "exit_code": self.exit_code,
            "error": self.error,
            "progress": {
                "done": self.progress_done,
                "total": self.progress_total,
                "message": self.progress_message,
            },
            "worker_id": self.worker_id,
            "heartbeat_at": iso(self.heartbeat_at),
            "env_key": self.env_key,
            "code_version": self.code_version,
            "warnings": self.warnings or [],
            "files": [f.to_dict() for f in self.files],
        }


class RunFile(db.Model):
    """A result file of a run, as stored in the storage backend."""

    __tablename__ = "run_files"
    __table_args__ = (sa.UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    #: Path relative to the run's output folder, ``/``-separated (``data/items.csv``).
    name: Mapped[str] = mapped_column(sa.String(512))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    storage_key: Mapped[str] = mapped_column(sa.String(1024))

    run: Mapped[Run] = relationship(back_populates="files")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}
