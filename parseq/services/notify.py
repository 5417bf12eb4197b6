"""Notifications of a run's end: which events it is (error, timeout, cancelled, recovered,
empty, slow), who hears of it (the parser's settings over the ``PARSEQ_NOTIFY_*`` defaults),
and each delivery, recorded in ``notification_deliveries``.

Off the run's path: where a run's end is recorded, :func:`run_ended` only sends a message to
the notification queue (``<queue>-notify``), which each worker process consumes on a thread of
its own; a failing receiver never touches the run. Webhooks are retried with backoff by
re-sending the delivery's message with a delay (bounded by ``PARSEQ_NOTIFY_ATTEMPTS``).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from flask import current_app, has_app_context

from parseq.core.config import Config
from parseq.core.redaction import webhook_target
from parseq.db.models import Parser, Run, RunStatus, db, utcnow
from parseq.db.notify_models import DeliveryStatus, NotificationDelivery
from parseq.db.runs import LOG_FILE
from parseq.queue.broker import send_notification
from parseq.services import livelog, metrics, notify_send
from parseq.services.notify_mail import deliver_mail, flush_digest

log = logging.getLogger(__name__)

#: Files that say nothing about what a run found.
NOT_RESULTS = frozenset({LOG_FILE, "env-build.log"})
SUMMARIES = {
    "error": "failed",
    "timeout": "timed out",
    "cancelled": "was cancelled",
    "recovered": "completed again after failing",
    "empty": "completed with an empty result",
    "slow": "completed slowly",
    "test": "sample notification (test button)",
}


@dataclass(frozen=True)
class Settings:
    """Whom a parser's runs notify, and of what."""

    events: frozenset[str]
    webhook_url: str
    webhook_secret: str
    webhook_format: str
    email_to: tuple[str, ...]
    slow_after_s: float
    email_digest_s: float


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def settings_for(parser: Parser | None, config: Config) -> Settings:
    """The parser's own notification settings, the defaults filling what it leaves unset."""
    own: dict[str, Any] = dict((parser.notifications or {}) if parser else {})

    def pick(key: str, default: Any) -> Any:
        return default if own.get(key) is None else own[key]

    return Settings(
        events=frozenset(pick("events", _split(config.notify_events))),
        webhook_url=pick("webhook_url", config.notify_webhook_url),
        webhook_secret=pick("webhook_secret", config.notify_webhook_secret),
        webhook_format=pick("webhook_format", config.notify_webhook_format),
        email_to=tuple(pick("email_to", _split(config.notify_email_to))),
        slow_after_s=float(pick("slow_after_s", config.notify_slow_after_s)),
        email_digest_s=float(pick("email_digest_s", config.notify_email_digest_s)),
    )


def is_empty(run: Run) -> bool:
    """A completed run found nothing: no result file (``run.log`` aside) has a byte in it (an
    empty ``output.txt`` and no other file, say)."""
    return not any(f.size > 0 for f in run.files if f.name not in NOT_RESULTS)


def _previous_status(run: Run) -> RunStatus | None:
    """The status of the parser's last run that ended before this one (cancelled ones aside)."""
    query = (
        db.select(Run.status)
        .where(
            Run.parser_id == run.parser_id,
            Run.id < run.id,
            Run.status.in_([RunStatus.COMPLETED, RunStatus.ERROR, RunStatus.TIMEOUT]),
        )
        .order_by(Run.id.desc())
        .limit(1)
    )
    return db.session.execute(query).scalar_one_or_none()


def events_of(run: Run, settings: Settings) -> list[str]:
    """The events a finished run is, of those the settings ask for."""
    found: list[str] = []
    if run.status in (RunStatus.ERROR, RunStatus.TIMEOUT, RunStatus.CANCELLED):
        found.append(run.status.value)
    elif run.status is RunStatus.COMPLETED:
        if _previous_status(run) in (RunStatus.ERROR, RunStatus.TIMEOUT):
            found.append("recovered")
        if is_empty(run):
            found.append("empty")
        duration = run.duration_s or 0.0
        if settings.slow_after_s > 0 and duration > settings.slow_after_s:
            found.append("slow")
    return [event for event in found if event in settings.events]


def base_url(config: Config) -> str:
    return (config.public_url or f"http://{config.host}:{config.port}").rstrip("/")


def payload_for(run: Run | None, event: str, config: Config, parser: str = "") -> dict[str, Any]:
    """What a webhook receives (and a mail tells) about one event of one run."""
    base = base_url(config)
    body: dict[str, Any] = {"event": event, "parser": parser, "sent_at": utcnow().isoformat()}
    if run is None:  # the admin's test button
        body.update(summary=f"Parseq: {parser} {SUMMARIES[event]}", run=None, links={})
        return body
    body["parser"] = run.parser.name
    body["summary"] = f"Parseq: parser {run.parser.name} {SUMMARIES[event]} (run {run.id})"
    body["run"] = {
        "id": run.id,
        "status": run.status.value,
        "trigger": run.trigger.value,
        "attempt": run.attempt,
        "exit_code": run.exit_code,
        "error": (run.error or "")[-config.error_tail_bytes :] or None,
        "duration_s": run.duration_s,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "files": [
            {
                "name": f.name,
                "size": f.size,
                "url": f"{base}/api/v1/runs/{run.id}/files/{f.name}",
            }
            for f in run.files
        ],
    }
    body["links"] = {
        "admin": f"{base}/admin/runs/details/?id={run.id}",
        "api": f"{base}/api/v1/runs/{run.id}",
    }
    return body


def _deliveries(
    run: Run | None, parser: Parser, events: list[str], settings: Settings, config: Config
) -> list[NotificationDelivery]:
    """One delivery per event and channel the settings have (webhook, mail), saved."""
    targets = []
    if settings.webhook_url:
        targets.append(("webhook", webhook_target(settings.webhook_url)))
    if settings.email_to:
        targets.append(("email", ", ".join(settings.email_to)[:500]))
    made = [
        NotificationDelivery(
            run_id=run.id if run is not None else None,
            parser_id=parser.id,
            event=event,
            channel=channel,
            target=target,
            payload=payload_for(run, event, config, parser.name),
        )
        for event in events
        for channel, target in targets
    ]
    db.session.add_all(made)
    db.session.commit()
    return made


def deliveries_json(run_id: int) -> list[dict[str, Any]]:
    """The run's notification deliveries as the API shows them."""
    query = (
        db.select(NotificationDelivery)
        .where(NotificationDelivery.run_id == run_id)
        .order_by(NotificationDelivery.id)
    )
    return [d.to_dict() for d in db.session.execute(query).scalars()]


# --- the message ------------------------------------------------------------------------------


def run_ended(run_id: int) -> None:
    """Announce a run's end to the notification queue, without waiting for the broker; never
    raises (a broker outage costs the notification, not the run)."""
    if not has_app_context():
        return
    try:
        future = send_notification(current_app._get_current_object(), "run", run_id, wait=False)
    except Exception:
        log.warning("run %s: its end could not be sent for notifications", run_id, exc_info=True)
        return

    def check(done: Future[Any]) -> None:
        if done.exception() is not None:
            log.warning("run %s: its end could not be sent: %s", run_id, done.exception())

    future.add_done_callback(check)


def handle(kind: str, ident: int) -> None:
    """The ``notify`` actor's body, in an app context."""
    if kind == "run":
        handle_run_end(ident)
    elif kind == "delivery":
        attempt(ident)
    elif kind == "digest":
        config: Config = current_app.extensions["parseq"].config
        flush_digest(ident, settings_for(db.session.get(Parser, ident), config).email_to, config)


def handle_run_end(run_id: int) -> None:
    """Count the run in the metrics and notify its events; once per run."""
    if not metrics.take_run_end(run_id):
        return  # a redelivered message: handled already
    run = db.session.get(Run, run_id)
    if run is None or not run.status.is_final:
        return
    config: Config = current_app.extensions["parseq"].config
    metrics.count_run(run)
    livelog.forget(run_id)
    settings = settings_for(run.parser, config)
    events = events_of(run, settings)
    for delivery in _deliveries(run, run.parser, events, settings, config):
        attempt(delivery.id)


def send_test(parser: Parser) -> list[NotificationDelivery]:
    """Send a sample notification to each of the parser's channels (the admin's test button);
    the deliveries are returned as they ended."""
    config: Config = current_app.extensions["parseq"].config
    settings = settings_for(parser, config)
    made = _deliveries(None, parser, ["test"], settings, config)
    for delivery in made:
        attempt(delivery.id, retry=False)
    return made


def attempt(delivery_id: int, retry: bool = True) -> None:
    """Try a pending delivery once; on a passing failure, try again later with backoff."""
    delivery = db.session.get(NotificationDelivery, delivery_id)
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return
    config: Config = current_app.extensions["parseq"].config
    parser = db.session.get(Parser, delivery.parser_id) if delivery.parser_id else None
    settings = settings_for(parser, config)
    parser_id = delivery.parser_id
    delivery.attempts += 1
    try:
        if delivery.channel == "webhook" and not settings.webhook_url:
            raise notify_send.SendFailed("no webhook URL is set any more", retry=False)
        if delivery.channel == "email" and not settings.email_to:
            raise notify_send.SendFailed("no mail address is set any more", retry=False)
        if delivery.channel == "webhook":
            notify_send.post_webhook(
                settings.webhook_url,
                delivery.payload,
                settings.webhook_format,
                settings.webhook_secret,
                config.notify_timeout_s,
                delivery.id,
            )
        elif not deliver_mail(
            delivery,
            settings.email_to,
            settings.email_digest_s,
            config,
            lambda delay_s: send_notification(
                current_app._get_current_object(), "digest", parser_id, delay_s
            ),
        ):
            db.session.commit()
            return  # held for a digest
    except notify_send.SendFailed as exc:
        _failed(delivery, exc, config, retry)
        return
    delivery.status, delivery.sent_at, delivery.last_error = DeliveryStatus.SENT, utcnow(), None
    db.session.commit()
    metrics.count_notification(delivery.channel, "sent")


def _failed(
    delivery: NotificationDelivery, exc: notify_send.SendFailed, config: Config, retry: bool
) -> None:
    delivery.last_error = str(exc)
    again = retry and exc.retry and delivery.attempts < config.notify_attempts
    if not again:
        delivery.status = DeliveryStatus.FAILED
    db.session.commit()
    if again:
        delay_s = config.notify_backoff_s * 2 ** (delivery.attempts - 1)
        log.info("delivery %s failed (%s); again in %.1f s", delivery.id, exc, delay_s)
        send_notification(current_app._get_current_object(), "delivery", delivery.id, delay_s)
    else:
        log.warning("delivery %s of %s failed: %s", delivery.id, delivery.event, exc)
        metrics.count_notification(delivery.channel, "failed")
