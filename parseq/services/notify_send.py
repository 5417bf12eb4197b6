"""Sending one notification: a webhook POST (JSON or Slack-style text, HMAC-signed) or a mail
over SMTP. Pure of the database: :mod:`parseq.services.notify` decides what to send and records
it."""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from parseq.core.config import Config
from parseq.core.errors import ValidationError

SIGNATURE_HEADER = "X-Parseq-Signature-256"
#: Longest receiver answer kept as a delivery's error, in characters.
ERROR_CHARS = 300


class SendFailed(Exception):
    """A delivery attempt failed; ``retry`` says whether another attempt may succeed (a 5xx,
    a timeout, a refused connection) or not (a 4xx, a bad address)."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def check_webhook_url(url: str) -> str:
    """Webhooks go over HTTP(S) only (no ``file:`` or other urllib schemes)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("webhook URL must be an http:// or https:// URL", field="webhook_url")
    return url


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(payload: Mapping[str, Any], fmt: str) -> bytes:
    """The JSON POSTed: the payload itself, or ``{"text": ...}`` for Slack-style hooks."""
    if fmt == "slack":
        return json.dumps({"text": text_of(payload)}).encode()
    return json.dumps(payload).encode()


def text_of(payload: Mapping[str, Any]) -> str:
    """A few human lines about the event (Slack text, mail body)."""
    run = payload.get("run") or {}
    lines = [payload.get("summary", "")]
    if run.get("error"):
        lines.append(f"error: {run['error'][-500:]}")
    if run.get("duration_s") is not None:
        lines.append(f"duration: {run['duration_s']:.1f} s")
    links = payload.get("links") or {}
    if links.get("admin"):
        lines.append(f"admin: {links['admin']}")
    if links.get("api"):
        lines.append(f"api: {links['api']}")
    return "\n".join(line for line in lines if line)


def post_webhook(
    url: str, payload: Mapping[str, Any], fmt: str, secret: str, timeout_s: float, delivery: int
) -> None:
    """POST the payload once; raise :class:`SendFailed` unless the receiver answers 2xx."""
    body = webhook_body(payload, fmt)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Parseq-Webhook",
        "X-Parseq-Event": str(payload.get("event", "")),
        "X-Parseq-Delivery": str(delivery),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    request = urllib.request.Request(check_webhook_url(url), body, headers, method="POST")
    try:
        # The scheme is checked above (http/https only): hence the nosec.
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # nosec B310
            resp.read(1024)
    except urllib.error.HTTPError as exc:
        answer = exc.read(ERROR_CHARS).decode("utf-8", "replace")
        message = f"HTTP {exc.code}: {answer}".strip()[:ERROR_CHARS]
        raise SendFailed(message, retry=exc.code >= 500 or exc.code == 429) from None
    except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
        reason = getattr(exc, "reason", exc)
        raise SendFailed(f"unreachable: {reason}"[:ERROR_CHARS], retry=True) from None


def send_mail(config: Config, to: Sequence[str], subject: str, text: str) -> None:
    """Send one plain-text mail through the configured SMTP server."""
    if not config.smtp_host:
        raise SendFailed("no SMTP server configured (PARSEQ_SMTP_HOST)", retry=False)
    message = EmailMessage()
    message["From"] = config.smtp_from
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message.set_content(text)
    timeout = config.notify_timeout_s
    try:
        if config.smtp_security == "ssl":
            context = ssl.create_default_context()
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                config.smtp_host, config.smtp_port, timeout=timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=timeout)
        with smtp:
            if config.smtp_security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if config.smtp_user:
                smtp.login(config.smtp_user, config.smtp_password)
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        text = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:ERROR_CHARS]
        raise SendFailed(text, retry=exc.smtp_code >= 400 and exc.smtp_code < 500) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise SendFailed(f"SMTP: {exc}"[:ERROR_CHARS], retry=True) from None
