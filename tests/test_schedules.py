"""Schedules as values: validation, fire times and the coalescing misfire plan (no clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from parseq.core.errors import ValidationError
from parseq.db.models import OverlapPolicy, ScheduleType
from parseq.scheduler.service import fire_times, parse_interval, plan_start, validate_schedule

UTC = timezone.utc
NOW = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)  # a Friday


@pytest.mark.parametrize(
    ("kind", "fields", "field", "words"),
    [
        ("cron", {"cron": "61 * * * *"}, "cron", "invalid cron expression"),
        ("cron", {"cron": "* * *"}, "cron", "expected 5"),
        ("cron", {"cron": "* * * * 3-1"}, "cron", "runs backwards"),
        ("cron", {"cron": ""}, "cron", "needs a cron expression"),
        ("interval", {"interval_s": 0}, "interval_s", "must be > 0"),
        ("interval", {"interval_s": -5}, "interval_s", "must be > 0"),
        ("interval", {"interval_s": "0m"}, "interval_s", "must be > 0"),
        ("interval", {"interval_s": "ten minutes"}, "interval_s", "like 90s, 15m"),
        ("interval", {}, "interval_s", "needs interval_s"),
        ("date", {"run_at": "2026-11-20T11:00:00Z"}, "run_at", "in the past"),
        ("date", {"run_at": "tomorrow"}, "run_at", "not an ISO 8601"),
        ("date", {}, "run_at", "needs run_at"),
        ("cron", {"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone", "unknown"),
        ("cron", {"cron": "* * * * *", "timezone": "../etc/passwd"}, "timezone", "unknown"),
        ("cron", {"cron": "* * * * *", "overlap": "queue"}, "overlap", "skip, allow"),
        ("hourly", {}, "schedule_type", "cron, interval, date"),
        (None, {"cron": "* * * * *", "interval_s": 5}, "schedule_type", "more than one"),
        (
            "interval",
            {"interval_s": 5, "schedule_start_at": "2026-12-02", "schedule_end_at": "2026-12-01"},
            "schedule_end_at",
            "end after it starts",
        ),
    ],
)
def test_invalid_schedules_name_the_field(
    kind: str | None, fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as info:
        validate_schedule(kind, now=NOW, **fields)
    assert info.value.field == field
    assert words in info.value.message
    assert info.value.to_dict()["field"] == field


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90), ("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1d", 86400)],
)
def test_intervals_take_seconds_minutes_and_hours(text: Any, seconds: int) -> None:
    assert parse_interval(text) == seconds
    assert validate_schedule("interval", interval_s=text).interval_s == seconds


def test_a_valid_schedule_is_normalized_and_drops_other_types_fields() -> None:
    schedule = validate_schedule(
        None,
        cron=" 0  9 * * 1-5 ",
        run_at=None,
        timezone="Europe/Moscow",
        schedule_start_at="2026-11-21T00:00:00",  # naive: read in the schedule's timezone
        now=NOW,
    )
    assert schedule.type is ScheduleType.CRON
    assert schedule.cron == "0 9 * * 1-5"
    assert schedule.start_at == datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    assert schedule.overlap is OverlapPolicy.SKIP
    assert validate_schedule(None).type is None


def test_cron_weekdays_follow_crontab_numbering_in_the_schedules_timezone() -> None:
    # Crontab 1-5 is Monday to Friday (APScheduler 3 alone would read Tuesday to Saturday).
    weekdays = validate_schedule("cron", cron="0 9 * * 1-5", timezone="Europe/Moscow")
    times = fire_times(weekdays, NOW, count=3)
    assert times == [
        datetime(2026, 11, 23, 6, 0, tzinfo=UTC),  # Monday 09:00 Moscow = 06:00 UTC
        datetime(2026, 11, 24, 6, 0, tzinfo=UTC),
        datetime(2026, 11, 25, 6, 0, tzinfo=UTC),
    ]
    sundays = validate_schedule("cron", cron="30 0 * * 0,7")
    assert [t.weekday() for t in fire_times(sundays, NOW, count=2)] == [6, 6]
    every_other = validate_schedule("cron", cron="0 0 * * */2")  # Sun, Tue, Thu, Sat
    assert [t.strftime("%a") for t in fire_times(every_other, NOW, count=4)] == [
        "Sat",
        "Sun",
        "Tue",
        "Thu",
    ]


def test_interval_times_count_from_the_start_or_anchor_and_stop_at_the_end() -> None:
    anchor = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
    schedule = replace(validate_schedule("interval", interval_s="20s"), anchor=anchor)
    assert fire_times(schedule, NOW, count=2) == [
        anchor + timedelta(seconds=40),
        anchor + timedelta(seconds=60),
    ]
    ending = replace(schedule, end_at=anchor + timedelta(seconds=50))
    assert fire_times(ending, NOW, count=5) == [anchor + timedelta(seconds=40)]


def test_a_one_off_date_fires_once() -> None:
    when = NOW + timedelta(hours=1)
    schedule = validate_schedule("date", run_at=when.isoformat(), now=NOW)
    assert fire_times(schedule, NOW, count=5) == [when]
    assert fire_times(schedule, when, count=5) == []
    # Stored one-offs in the past stay valid (they may have run already).
    assert validate_schedule("date", run_at="2020-01-01T00:00:00Z", allow_past=True).run_at


def test_missed_occurrences_coalesce_into_one_catch_up_within_the_grace() -> None:
    every_minute = validate_schedule("cron", cron="* * * * *")
    since = NOW - timedelta(minutes=10)  # last run 10 min ago, scheduler down since
    plan = plan_start(every_minute, since, NOW, grace_s=300)
    assert plan.catch_up == datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # the latest only
    assert plan.missed == datetime(2026, 11, 20, 11, 51, tzinfo=UTC)  # first beyond the grace
    assert plan.next == datetime(2026, 11, 20, 12, 1, tzinfo=UTC)

    just_now = plan_start(every_minute, NOW - timedelta(seconds=5), NOW, grace_s=300)
    assert (just_now.catch_up, just_now.missed) == (None, None)

    no_grace = plan_start(every_minute, since, NOW, grace_s=0)
    assert no_grace.catch_up is None
    assert no_grace.missed == datetime(2026, 11, 20, 11, 51, tzinfo=UTC)
