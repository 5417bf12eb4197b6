"""Schedule fields in the admin's parser form: validation messages and stored values."""

from __future__ import annotations

import html
from datetime import datetime, timedelta, timezone

import pytest
from flask import Flask

from parseq.db.models import Parser, ScheduleType, db, utcnow
from parseq.services import schedules
from tests.conftest import add_parser, admin_client

BASE = {
    "script": "script:echo_env.py",
    "default_args": "{}",
    "max_retries": "0",
    "enabled": "y",
    "timezone": "UTC",
    "overlap": "skip",
}


def _post(app: Flask, url: str, **fields: str) -> tuple[int, str]:
    client = admin_client(app)
    resp = client.post(url, data={**BASE, **fields, "csrf_token": client.csrf_token})
    return resp.status_code, html.unescape(resp.data.decode())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"schedule_type": "cron", "cron": "61 * * * *"}, "invalid cron expression '61 * * * *'"),
        ({"schedule_type": "interval", "interval_s": "0"}, "interval must be > 0 seconds"),
        ({"schedule_type": "interval", "interval_s": "-1h"}, "is not seconds or a duration"),
        ({"schedule_type": "date", "run_at": "2020-01-01 10:00:00"}, "is in the past"),
        (
            {"schedule_type": "cron", "cron": "* * * * *", "timezone": "Europe/Atlantis"},
            "unknown timezone 'Europe/Atlantis'",
        ),
    ],
)
def test_invalid_schedules_are_form_errors(
    sqlite_app: Flask, fields: dict[str, str], message: str
) -> None:
    status, page = _post(sqlite_app, "/admin/parsers/new/", name="bad", **fields)
    assert status == 200  # the form again, not a crash
    assert message in page
    assert db.session.execute(db.select(Parser).filter_by(name="bad")).first() is None


def test_valid_schedules_are_stored_normalized(sqlite_app: Flask) -> None:
    status, _ = _post(
        sqlite_app,
        "/admin/parsers/new/",
        name="quarterly",
        schedule_type="interval",
        interval_s="15m",
    )
    assert status == 302
    when = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
    local = when.astimezone(timezone(timedelta(hours=3))).strftime("%Y-%m-%d %H:%M:%S")
    status, _ = _post(
        sqlite_app,
        "/admin/parsers/new/",
        name="one-off",
        schedule_type="date",
        run_at=local,  # entered in the parser's timezone
        timezone="Europe/Moscow",
    )
    assert status == 302
    db.session.expire_all()
    quarterly = db.session.execute(db.select(Parser).filter_by(name="quarterly")).scalar_one()
    assert (quarterly.schedule_type, quarterly.interval_s) == (ScheduleType.INTERVAL, 900)
    one_off = db.session.execute(db.select(Parser).filter_by(name="one-off")).scalar_one()
    assert one_off.run_at == when
    assert schedules.next_run_at(one_off) == when

    page = admin_client(sqlite_app).get("/admin/parsers/").data.decode()
    assert "interval: every 900 s" in page
    assert str(when.replace(tzinfo=timezone.utc).isoformat()[:10]) in page  # next_run_at column


def test_a_past_one_off_already_saved_does_not_block_other_edits(sqlite_app: Flask) -> None:
    past = utcnow().replace(microsecond=0) - timedelta(days=1)
    parser = add_parser("ran", "echo_env.py", schedule_type=ScheduleType.DATE, run_at=past)
    edit = admin_client(sqlite_app).get(f"/admin/parsers/edit/?id={parser.id}").data.decode()
    shown = past.strftime("%Y-%m-%d %H:%M:%S")
    assert shown in edit
    # The edit form shows the stored choices, so saving it keeps them.
    assert '<option selected value="date">' in edit
    assert '<option selected value="skip">' in edit
    status, _ = _post(
        sqlite_app,
        f"/admin/parsers/edit/?id={parser.id}",
        name="ran",
        description="edited",
        schedule_type="date",
        run_at=shown,
    )
    assert status == 302
    db.session.expire_all()
    assert db.session.get(Parser, parser.id).description == "edited"
