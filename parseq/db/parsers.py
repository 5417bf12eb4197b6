"""The ``parsers`` table, and the schedule occurrences a parser skipped."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from parseq.core.enums import NotebookEngine, OverlapPolicy, ParserKind, ScheduleType
from parseq.core.errors import SecretsKeyError
from parseq.core.redaction import webhook_target
from parseq.db.base import UTCDateTime, db, iso, str_enum, utcnow
from parseq.db.crypto import EncryptedJSON

if TYPE_CHECKING:
    from parseq.db.runs import Run

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class Parser(db.Model):
    """A registered parser: a script in ``parsers/`` or a notebook in ``notebooks/``."""

    __tablename__ = "parsers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    kind: Mapped[ParserKind] = mapped_column(str_enum(ParserKind), default=ParserKind.SCRIPT)
    #: Relative to ``parsers_dir`` (scripts) or ``notebooks_dir`` (notebooks); empty for a
    #: parser whose code was uploaded (it exists only as stored code versions).
    path: Mapped[str] = mapped_column(sa.String(512))
    requirements: Mapped[str] = mapped_column(sa.Text, default="")
    default_args: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    #: Secret name -> value, encrypted at rest (``crypto.EncryptedJSON``). Read and assign it
    #: as a whole dict. ``to_dict`` lists the names only.
    secrets: Mapped[dict[str, str]] = mapped_column(EncryptedJSON, default=dict)
    #: Wall-clock limit; None = the configured default.
    timeout_s: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    max_retries: Mapped[int] = mapped_column(default=0)
    #: Retry runs that timed out too (errors always retry while attempts are left).
    retry_on_timeout: Mapped[bool] = mapped_column(default=False)
    #: Sandbox limits; None = the configured default, 0 = no limit.
    max_memory_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_cpu_s: Mapped[float | None] = mapped_column(sa.Float)
    max_processes: Mapped[int | None]
    max_file_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_open_files: Mapped[int | None]
    #: Automatic (scheduled) runs on. Runs by hand and over the API work either way.
    enabled: Mapped[bool] = mapped_column(default=True)
    #: The schedule (see ``parseq.scheduler``); no type = runs only by hand or over the API.
    schedule_type: Mapped[ScheduleType | None] = mapped_column(
        str_enum(ScheduleType), nullable=True
    )
    #: 5-field crontab (``cron``), seconds between runs (``interval``), the one-off time (``date``).
    cron: Mapped[str | None] = mapped_column(sa.String(120))
    interval_s: Mapped[int | None]
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Optional window outside which the schedule does not fire.
    schedule_start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    schedule_end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: IANA name the cron fields (and naive form datetimes) are read in.
    timezone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    overlap: Mapped[OverlapPolicy] = mapped_column(
        str_enum(OverlapPolicy), default=OverlapPolicy.SKIP
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: Positional arguments of a run that gives none, after the options in argv.
    default_positional: Mapped[list[Any] | None] = mapped_column(sa.JSON, default=list)
    #: Notebooks only (migration 0004 added it).
    engine: Mapped[NotebookEngine] = mapped_column(
        str_enum(NotebookEngine), default=NotebookEngine.FAST, server_default="fast"
    )
    #: Notification settings (``parseq.services.notify_settings``; unset ones = the defaults),
    #: encrypted like the secrets: webhook URLs (Slack's) and signing secrets are credentials. Last,
    #: where its migration adds it.
    notifications: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON, nullable=True)
    #: The number of its current code version (``parseq.services.code_store``); None until its
    #: code is stored (a parser saved before 0006, until the start-up sync or its next save).
    code_version: Mapped[int | None]

    runs: Mapped[list[Run]] = relationship(
        back_populates="parser", cascade="all, delete-orphan", passive_deletes=True
    )

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        """The parser as the API shows it: secrets by name only."""
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind.value,
            "path": self.path,
            "code_version": self.code_version,
            "requirements": self.requirements,
            "engine": (self.engine or NotebookEngine.FAST).value,
            "default_args": self.default_args or {},
            "default_positional": self.default_positional or [],
            "secrets": self.secret_names(),
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "retry_on_timeout": self.retry_on_timeout,
            "limits": {
                "memory_bytes": self.max_memory_bytes,
                "cpu_s": self.max_cpu_s,
                "processes": self.max_processes,
                "file_bytes": self.max_file_bytes,
                "open_files": self.max_open_files,
            },
            "enabled": self.enabled,
            "schedule": self.schedule_dict(),
            "notifications": notifications_dict(self.notifications),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }

    def schedule_dict(self) -> dict[str, Any] | None:
        """The schedule as the API shows it; None when the parser has none."""
        if self.schedule_type is None:
            return None
        return {
            "type": self.schedule_type.value,
            "cron": self.cron,
            "interval_s": self.interval_s,
            "run_at": iso(self.run_at),
            "start_at": iso(self.schedule_start_at),
            "end_at": iso(self.schedule_end_at),
            "timezone": self.timezone or "UTC",
            "overlap": (self.overlap or OverlapPolicy.SKIP).value,
        }

    def secret_names(self) -> list[str] | None:
        """The secrets' names (never their values); None when the key cannot decrypt them."""
        try:
            return sorted(self.secrets or {})
        except SecretsKeyError:
            return None


class ScheduleSkip(db.Model):
    """A scheduled occurrence that created no run, and why (overlap, missed while down)."""

    __tablename__ = "schedule_skips"
    __table_args__ = (sa.UniqueConstraint("parser_id", "scheduled_for"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    parser_id: Mapped[int] = mapped_column(sa.ForeignKey("parsers.id", ondelete="CASCADE"))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    parser: Mapped[Parser] = relationship()

    def __str__(self) -> str:
        return f"{self.parser.name} @ {iso(self.scheduled_for)}"

    def to_dict(self) -> dict[str, Any]:
        return {"scheduled_for": iso(self.scheduled_for), "reason": self.reason}


def notifications_dict(settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """A parser's own notification settings as the API shows them: the webhook URL by its
    host only and the signing secret as set or not (both are credentials)."""
    try:
        own = dict(settings or {})
    except SecretsKeyError:
        return None
    url = own.pop("webhook_url", None)
    secret = own.pop("webhook_secret", None)
    return {
        **own,
        "webhook": webhook_target(url) if url else None,
        "webhook_secret_set": bool(secret),
    }
