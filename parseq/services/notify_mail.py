"""Notification mails, with the digest: at most one mail per parser per
``email_digest_s``; the events in between are held and go out together in one summary when
the window ends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from parseq.core.config import Config
from parseq.db.models import db, utcnow
from parseq.db.notify_models import DeliveryStatus, NotificationDelivery
from parseq.services import metrics, notify_send


def _last_mail_at(parser_id: int | None) -> Any:
    query = db.select(db.func.max(NotificationDelivery.sent_at)).where(
        NotificationDelivery.parser_id == parser_id,
        NotificationDelivery.channel == "email",
        NotificationDelivery.status.in_([DeliveryStatus.SENT, DeliveryStatus.DIGESTED]),
    )
    return db.session.execute(query).scalar_one_or_none()


def _held(parser_id: int | None) -> list[NotificationDelivery]:
    query = (
        db.select(NotificationDelivery)
        .where(
            NotificationDelivery.parser_id == parser_id,
            NotificationDelivery.channel == "email",
            NotificationDelivery.status == DeliveryStatus.HELD,
        )
        .order_by(NotificationDelivery.id)
    )
    return list(db.session.execute(query).scalars())


def deliver_mail(
    delivery: NotificationDelivery,
    to: tuple[str, ...],
    digest_s: float,
    config: Config,
    schedule_digest: Callable[[float], None],
) -> bool:
    """Mail one event; False when it is held for the digest (a mail went out less than
    ``digest_s`` ago). The first event held in a window schedules the digest."""
    if digest_s > 0 and delivery.event != "test":
        last = _last_mail_at(delivery.parser_id)
        if last is not None and utcnow() - last < timedelta(seconds=digest_s):
            first = not _held(delivery.parser_id)
            delivery.status, delivery.attempts = DeliveryStatus.HELD, 0  # not tried on its own
            db.session.commit()
            if first:
                left = (last + timedelta(seconds=digest_s) - utcnow()).total_seconds()
                schedule_digest(max(left, 0.0))
            return False
    payload = delivery.payload or {}
    notify_send.send_mail(
        config, to, payload.get("summary", "Parseq"), notify_send.text_of(payload)
    )
    return True


def flush_digest(parser_id: int, to: tuple[str, ...], config: Config) -> None:
    """Mail the parser's held events in one summary."""
    held = _held(parser_id)
    if not held:
        return
    parser = (held[0].payload or {}).get("parser", "?")
    lines = [f"{len(held)} notification(s) of parser {parser} since the last mail:", ""]
    lines += [f"- {(d.payload or {}).get('summary', d.event)}" for d in held]
    subject = f"Parseq: {len(held)} notification(s) of parser {parser}"
    now = utcnow()
    try:
        notify_send.send_mail(config, to, subject, "\n".join(lines))
    except notify_send.SendFailed as exc:
        for delivery in held:
            delivery.status, delivery.last_error = DeliveryStatus.FAILED, str(exc)
            delivery.attempts += 1
        db.session.commit()
        metrics.count_notification("email", "failed")
        return
    for delivery in held:
        delivery.status, delivery.sent_at = DeliveryStatus.DIGESTED, now
        delivery.attempts += 1
    db.session.commit()
    metrics.count_notification("email", "sent")
