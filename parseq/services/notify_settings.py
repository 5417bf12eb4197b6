"""A parser's own notification settings: checked (for the API and the admin alike) and merged
into the stored ones. A key left out (or null) falls back to the ``PARSEQ_NOTIFY_*`` default."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from parseq.core.errors import ValidationError
from parseq.services.notify_send import check_webhook_url

EVENTS = ("error", "timeout", "cancelled", "recovered", "empty", "slow")
FORMATS = ("json", "slack")
SETTING_KEYS = (
    "events",
    "webhook_url",
    "webhook_secret",
    "webhook_format",
    "email_to",
    "slow_after_s",
    "email_digest_s",
)
#: Longest threshold or digest window accepted: a week, in seconds.
MAX_SECONDS = 7 * 24 * 3600
ADDRESS_RE = re.compile(r"^[^@\s,<>]+@[^@\s,<>]+$")


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{key} must be a number of seconds or null", field=key)
    if not 0 <= value <= MAX_SECONDS:  # also refuses NaN
        raise ValidationError(f"{key} must be from 0 to {MAX_SECONDS} seconds", field=key)
    return float(value)


def _check(key: str, value: Any) -> Any:
    if key == "events":
        if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
            raise ValidationError("events must be a list of event names", field=key)
        unknown = sorted(set(value) - set(EVENTS))
        if unknown:
            raise ValidationError(
                f"unknown event(s) {', '.join(unknown)}; known: {', '.join(EVENTS)}", field=key
            )
        return sorted(set(value), key=EVENTS.index)
    if key in ("webhook_url", "webhook_secret"):
        if not isinstance(value, str) or len(value) > 2000:
            raise ValidationError(f"{key} must be a string (at most 2000)", field=key)
        return check_webhook_url(value) if key == "webhook_url" else value
    if key == "webhook_format":
        if value not in FORMATS:
            raise ValidationError("webhook_format must be json or slack", field=key)
        return value
    if key == "email_to":
        if not isinstance(value, list) or not value:
            raise ValidationError("email_to must be a non-empty list of addresses", field=key)
        for address in value:
            if not isinstance(address, str) or not ADDRESS_RE.match(address):
                raise ValidationError(f"{address!r} is not an e-mail address", field=key)
        return value
    return _seconds(key, value)


def check_settings(value: Any) -> dict[str, Any]:
    """Validate a ``notifications`` object (null values kept: they remove a key)."""
    if not isinstance(value, dict):
        raise ValidationError("must be an object of notification settings", field="notifications")
    unknown = sorted(set(value) - set(SETTING_KEYS))
    if unknown:
        raise ValidationError(
            f"unknown notification setting(s): {', '.join(unknown)}", field="notifications"
        )
    return {k: None if v is None else _check(k, v) for k, v in value.items()}


def merged(stored: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The stored settings with checked ``changes`` applied; a null removes a key."""
    result = {**(stored or {}), **changes}
    return {k: v for k, v in result.items() if v is not None}
