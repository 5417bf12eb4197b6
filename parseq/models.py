"""Database models: parsers, their runs, and the files each run stored."""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from parseq.crypto import EncryptedJSON
from parseq.errors import SecretsKeyError
from parseq.notify_send import webhook_target

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """A timestamp that always comes back timezone-aware UTC (SQLite stores it naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Parseq stores timezone-aware UTC only")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


@contextlib.contextmanager
def kept_loaded() -> Iterator[Session]:
    """``db.session`` with ``expire_on_commit`` off for the block: rows it loaded stay loaded
    across commits, where the default would reload each on its next use (a round trip)."""
    session = db.session()
    before, session.expire_on_commit = session.expire_on_commit, False
    try:
        yield session
    finally:
        session.expire_on_commit = before


class RunStatus(str, enum.Enum):
    """Where a run is in its life. The last four are final."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.PENDING, RunStatus.RUNNING)


ACTIVE_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)


class RunTrigger(str, enum.Enum):
    """What created a run."""

    MANUAL = "manual"
    SCHEDULE = "schedule"
    API = "api"


class ParserKind(str, enum.Enum):
    SCRIPT = "script"
    NOTEBOOK = "notebook"


class NotebookEngine(str, enum.Enum):
    """How a notebook runs: in place without a kernel (fast), or by a Jupyter kernel."""

    FAST = "fast"
    KERNEL = "kernel"


class ScheduleType(str, enum.Enum):
    """APScheduler's three trigger types."""

    CRON = "cron"
    INTERVAL = "interval"
    DATE = "date"


class OverlapPolicy(str, enum.Enum):
    """What a due occurrence does while a run of the parser is pending or running."""

    SKIP = "skip"
    ALLOW = "allow"


def _str_enum(cls: type[enum.Enum]) -> sa.Enum:
    # Stored as plain strings (no native PG enum) so adding a value needs no migration.
    return sa.Enum(
        cls,
        native_enum=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Parser(db.Model):
    """A registered parser: a script in ``parsers/`` or a notebook in ``notebooks/``."""

    __tablename__ = "parsers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    kind: Mapped[ParserKind] = mapped_column(_str_enum(ParserKind), default=ParserKind.SCRIPT)
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
        _str_enum(ScheduleType), nullable=True
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
        _str_enum(OverlapPolicy), default=OverlapPolicy.SKIP
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: Positional arguments of a run that gives none, after the options in argv.
    default_positional: Mapped[list[Any] | None] = mapped_column(sa.JSON, default=list)
    #: Notebooks only (migration 0004 added it).
    engine: Mapped[NotebookEngine] = mapped_column(
        _str_enum(NotebookEngine), default=NotebookEngine.FAST, server_default="fast"
    )
    #: Notification settings (``parseq.notify_settings``; unset ones = the defaults), encrypted
    #: like the secrets: webhook URLs (Slack's) and signing secrets are credentials. Last, where
    #: its migration adds it.
    notifications: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON, nullable=True)
    #: The number of its current code version (``parseq.code_store``); None until its code is
    #: stored (a parser saved before 0006, until the start-up sync or its next save).
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
            "next_run_at": _iso(self.next_run_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }

    def schedule_dict(self) -> dict[str, Any] | None:
        """The schedule as the API shows it; None when the parser has none."""
        if self.schedule_type is None:
            return None
        return {
            "type": self.schedule_type.value,
            "cron": self.cron,
            "interval_s": self.interval_s,
            "run_at": _iso(self.run_at),
            "start_at": _iso(self.schedule_start_at),
            "end_at": _iso(self.schedule_end_at),
            "timezone": self.timezone or "UTC",
            "overlap": (self.overlap or OverlapPolicy.SKIP).value,
        }

    @property
    def next_run_at(self) -> datetime | None:
        """When the scheduler will next create a run; None if unscheduled or disabled."""
        from parseq.scheduler import next_fire_times

        times = next_fire_times(self, count=1)
        return times[0] if times else None

    def secret_names(self) -> list[str] | None:
        """The secrets' names (never their values); None when the key cannot decrypt them."""
        try:
            return sorted(self.secrets or {})
        except SecretsKeyError:
            return None


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
    status: Mapped[RunStatus] = mapped_column(_str_enum(RunStatus), default=RunStatus.PENDING)
    trigger: Mapped[RunTrigger] = mapped_column(_str_enum(RunTrigger), default=RunTrigger.MANUAL)
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
    #: The row of ``code_version`` (``parseq.code_models``), loaded with the run by workers.
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
            "not_before": _iso(self.not_before),
            "queued_at": _iso(self.queued_at),
            "scheduled_for": _iso(self.scheduled_for),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_s": self.duration_s,
            "exit_code": self.exit_code,
            "error": self.error,
            "progress": {
                "done": self.progress_done,
                "total": self.progress_total,
                "message": self.progress_message,
            },
            "worker_id": self.worker_id,
            "heartbeat_at": _iso(self.heartbeat_at),
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
        return f"{self.parser.name} @ {_iso(self.scheduled_for)}"

    def to_dict(self) -> dict[str, Any]:
        return {"scheduled_for": _iso(self.scheduled_for), "reason": self.reason}


class User(db.Model):
    """An admin panel login. Only a password hash is stored (werkzeug's scrypt/pbkdf2)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(256))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Flask-Login's user interface (UserMixin without the import, to keep models Flask-free).
    is_authenticated = True
    is_anonymous = False

    @property
    def is_active(self) -> bool:
        return self.active

    def get_id(self) -> str:
        return str(self.id)

    def __str__(self) -> str:
        return self.username


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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
