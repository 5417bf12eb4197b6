"""Tables of notifications, metrics and live logs (``parseq.services.notify``,
``parseq.services.metrics``,
``parseq.services.livelog``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from parseq.db.base import UTCDateTime, db, iso, utcnow


class DeliveryStatus:
    """Where a notification delivery is: the last three are final."""

    PENDING = "pending"
    #: Held for the parser's next e-mail digest.
    HELD = "held"
    SENT = "sent"
    FAILED = "failed"
    #: Went out inside a digest mail.
    DIGESTED = "digested"


class NotificationDelivery(db.Model):
    """One notification of one event on one channel (a webhook URL, a mail)."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        sa.Index("ix_notification_deliveries_run_id", "run_id"),
        sa.Index("ix_notification_deliveries_parser_channel", "parser_id", "channel", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: None for a sample sent from the admin's test button.
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    parser_id: Mapped[int | None] = mapped_column(sa.ForeignKey("parsers.id", ondelete="CASCADE"))
    #: error, timeout, cancelled, recovered, empty, slow or test.
    event: Mapped[str] = mapped_column(sa.String(16))
    #: webhook or email.
    channel: Mapped[str] = mapped_column(sa.String(16))
    #: Where it goes, secret-free: the webhook's scheme and host, the mail's addresses.
    target: Mapped[str] = mapped_column(sa.String(500))
    status: Mapped[str] = mapped_column(sa.String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(1000))
    #: The body sent (or to send): the webhook's JSON, the mail's text.
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "channel": self.channel,
            "target": self.target,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": iso(self.created_at),
            "sent_at": iso(self.sent_at),
        }


class RunEnd(db.Model):
    """A run's end as notifications and metrics took it in: once per run, however often the
    message announcing it is delivered."""

    __tablename__ = "run_ends"

    run_id: Mapped[int] = mapped_column(
        sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    handled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MetricCounter(db.Model):
    """A Prometheus counter (or histogram bucket) kept in the database, so every process
    (gunicorn workers, worker processes on other machines) adds to the same value."""

    __tablename__ = "metric_counters"

    metric: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    #: The labels as sorted JSON, e.g. ``{"parser": "quotes", "status": "error"}``.
    labels: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    value: Mapped[float] = mapped_column(sa.Float, default=0.0)


class RunLogChunk(db.Model):
    """A piece of a running run's log (already redacted), copied by its worker every heartbeat
    so any web process can show it live; deleted once the stored log takes over."""

    __tablename__ = "run_log_chunks"
    __table_args__ = (sa.UniqueConstraint("run_id", "start"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    #: Where the chunk starts in the log, in bytes.
    start: Mapped[int] = mapped_column(sa.BigInteger)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
