"""The admin's side of notifications and trends: the parser form's notification fields, the
test button, and a per-parser chart of recent runs' durations and result sizes (SVG drawn on
the server, like the dashboard's: no JavaScript, no CDN)."""

from __future__ import annotations

from typing import Any

from flask import flash
from markupsafe import Markup, escape
from wtforms import SelectChoice, fields
from wtforms import ValidationError as FormValidationError
from wtforms.validators import NumberRange, Optional

from parseq.core.errors import ParseqError
from parseq.core.redaction import webhook_target
from parseq.db.models import Parser, Run, RunStatus, db
from parseq.db.notify_models import DeliveryStatus
from parseq.services import notify
from parseq.services.notify_settings import EVENTS, check_settings, merged
from parseq.web.admin.admin_forms import Unbound
from parseq.web.admin.dashboard import STATUS_HEX

TREND_RUNS = 50
WIDTH, HEIGHT, PAD = 600, 90, 4


class _Text(Unbound, fields.StringField):
    pass


class _Secret(Unbound, fields.PasswordField):
    """Never rendered with its value: webhook URLs and secrets are credentials."""


class _Float(Unbound, fields.FloatField):
    pass


class _Select(Unbound, fields.SelectField):
    pass


class _Check(Unbound, fields.BooleanField):
    pass


FORM_FIELDS: dict[str, Any] = {
    "notify_events": _Text(
        "Notify on",
        description=f"Comma-separated, of: {', '.join(EVENTS)}. Empty = the default "
        "(PARSEQ_NOTIFY_EVENTS); 'none' = no notifications.",
    ),
    "notify_webhook_url": _Secret(
        "Webhook URL", description="Set or replace; left empty keeps the current one."
    ),
    "notify_webhook_secret": _Secret("Webhook signing secret", description="HMAC-SHA256 key."),
    "notify_webhook_format": _Select(
        "Webhook format",
        choices=[SelectChoice("", "(default)"), SelectChoice("json"), SelectChoice("slack")],
        validate_choice=False,  # checked with the API's rules (check_settings)
    ),
    "notify_webhook_remove": _Check("Remove the webhook URL and secret (use the defaults)"),
    "notify_email_to": _Text("Mail to", description="Comma-separated; empty = the default."),
    "notify_slow_after_s": _Float(
        "Slow after (s)",
        validators=[Optional(), NumberRange(min=0)],
        description="Empty = default.",
    ),
    "notify_email_digest_s": _Float(
        "Mail digest window (s)",
        validators=[Optional(), NumberRange(min=0)],
        description="At most one mail per window, then a summary. Empty = default.",
    ),
}


def prefill(form: Any, parser: Parser) -> None:
    """Show the parser's own settings (never the webhook URL or secret)."""
    own = parser.notifications or {}
    if "events" in own:
        form.notify_events.data = ", ".join(own["events"]) or "none"
    form.notify_webhook_format.data = own.get("webhook_format", "")
    form.notify_email_to.data = ", ".join(own.get("email_to") or [])
    form.notify_slow_after_s.data = own.get("slow_after_s")
    form.notify_email_digest_s.data = own.get("email_digest_s")
    if own.get("webhook_url"):
        form.notify_webhook_url.description = f"Now: {webhook_target(own['webhook_url'])} (set)"


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def apply_form(form: Any, parser: Parser) -> None:
    """Check the form's notification settings as the API does and store them; a bad value
    becomes the field's error."""
    events = (form.notify_events.data or "").strip()
    changes: dict[str, Any] = {
        "events": [] if events == "none" else (_split(events) or None),
        "webhook_format": form.notify_webhook_format.data or None,
        "email_to": _split(form.notify_email_to.data) or None,
        "slow_after_s": form.notify_slow_after_s.data,
        "email_digest_s": form.notify_email_digest_s.data,
    }
    if form.notify_webhook_remove.data:
        changes.update(webhook_url=None, webhook_secret=None)
    for key in ("webhook_url", "webhook_secret"):
        if form[f"notify_{key}"].data:
            changes[key] = form[f"notify_{key}"].data
    try:
        checked = check_settings(changes)
    except ParseqError as exc:
        field = form[f"notify_{getattr(exc, 'field', '')}"] if _has(form, exc) else None
        if field is not None:
            field.errors = [*field.errors, exc.message]
        raise FormValidationError(exc.message) from exc
    parser.notifications = merged(parser.notifications, checked)


def _has(form: Any, exc: ParseqError) -> bool:
    return f"notify_{getattr(exc, 'field', '')}" in form


def send_test(parser: Parser) -> None:
    """The test button: a sample to each channel, the outcome flashed."""
    made = notify.send_test(parser)
    if not made:
        flash("No webhook or mail address is set for this parser (nor by default).", "error")
        return
    for delivery in made:
        if delivery.status == DeliveryStatus.SENT:
            flash(f"Sample notification sent ({delivery.channel} to {delivery.target}).", "success")
        else:
            flash(f"Sample {delivery.channel} failed: {delivery.last_error}", "error")


# --- trends -----------------------------------------------------------------------------------


def _result_bytes(run: Run) -> int:
    return sum(f.size for f in run.files if f.name not in notify.NOT_RESULTS)


def trend_runs(parser: Parser) -> list[Run]:
    """The parser's last finished runs, oldest first."""
    query = (
        db.select(Run)
        .options(db.selectinload(Run.files))
        .where(Run.parser_id == parser.id, Run.finished_at.is_not(None))
        .order_by(Run.id.desc())
        .limit(TREND_RUNS)
    )
    return list(reversed(db.session.execute(query).scalars().all()))


def _bars(values: list[float], colors: list[str], titles: list[str], label: str) -> str:
    top = max(values, default=0) or 1
    step = WIDTH / max(len(values), 1)
    parts = [
        f'<svg class="parseq-trend" role="img" aria-label="{escape(label)}" width="100%" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none">'
    ]
    for i, (value, color, title) in enumerate(zip(values, colors, titles, strict=True)):
        h = max((HEIGHT - PAD) * value / top, 1)
        parts.append(
            f'<rect x="{i * step + 1:.1f}" y="{HEIGHT - h:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{escape(title)}</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)


def trend_chart(parser: Parser) -> Markup:
    """Two bar charts of the last runs: duration (coloured by status) and result bytes (grey
    when the run returned nothing), so a parser that suddenly finds nothing stands out."""
    runs = trend_runs(parser)
    if not runs:
        return Markup('<p class="text-muted">No finished runs yet.</p>')
    durations = [r.duration_s or 0.0 for r in runs]
    sizes = [float(_result_bytes(r)) for r in runs]
    colors = [STATUS_HEX.get(r.status, "#6c757d") for r in runs]
    size_colors = [
        "#dc3545" if s == 0 and r.status is RunStatus.COMPLETED else "#17a2b8"
        for r, s in zip(runs, sizes, strict=True)
    ]
    d_titles = [
        f"run {r.id}: {r.status.value}, {d:.1f} s" for r, d in zip(runs, durations, strict=True)
    ]
    s_titles = [f"run {r.id}: {int(s)} bytes of results" for r, s in zip(runs, sizes, strict=True)]
    html = (
        f'<div id="parser-trends"><small>Duration (last {len(runs)} runs, max '
        f"{max(durations):.1f} s)</small>{_bars(durations, colors, d_titles, 'durations')}"
        f"<small>Result size (max {int(max(sizes))} bytes; red = completed with nothing)</small>"
        f"{_bars(sizes, size_colors, s_titles, 'result sizes')}</div>"
    )
    # Built from numbers, status colours and escaped titles only: hence the nosec.
    return Markup(html)  # nosec B704
