"""Parser schedules as values: validation, APScheduler triggers, and fire-time arithmetic.

Everything here is pure (no database, no clock unless given ``now``), so the API, the admin and
the scheduler service agree on what a schedule means. ``parseq.scheduler`` re-exports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from parseq.core.errors import ValidationError
from parseq.db.models import OverlapPolicy, ScheduleType, utcnow

_TICK = timedelta(microseconds=1)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
# Crontab numbers weekdays from Sunday = 0 (7 too); APScheduler 3 from Monday = 0. We pass
# names so ``1-5`` keeps meaning Monday to Friday (apscheduler issue 286).
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class Schedule:
    """A validated schedule. Hashable: the scheduler compares them to notice edits."""

    type: ScheduleType | None
    cron: str | None = None
    interval_s: int | None = None
    run_at: datetime | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    timezone: str = "UTC"
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    #: Where an interval without a start time counts from (the parser's creation), so every
    #: scheduler process computes the same due times.
    anchor: datetime | None = None

    @classmethod
    def from_parser(cls, parser: Any) -> Schedule:
        """The parser's stored schedule (past one-off dates allowed: it may have run already)."""
        schedule = validate_schedule(
            parser.schedule_type,
            cron=parser.cron,
            interval_s=parser.interval_s,
            run_at=parser.run_at,
            schedule_start_at=parser.schedule_start_at,
            schedule_end_at=parser.schedule_end_at,
            timezone=parser.timezone or "UTC",
            overlap=parser.overlap or OverlapPolicy.SKIP,
            allow_past=True,
        )
        return replace(schedule, anchor=parser.created_at)

    def apply(self, parser: Any) -> None:
        """Write the schedule onto a parser model."""
        parser.schedule_type = self.type
        parser.cron = self.cron
        parser.interval_s = self.interval_s
        parser.run_at = self.run_at
        parser.schedule_start_at = self.start_at
        parser.schedule_end_at = self.end_at
        parser.timezone = self.timezone
        parser.overlap = self.overlap

    def trigger(self) -> BaseTrigger | None:
        """The APScheduler trigger; None without a schedule type."""
        tz = ZoneInfo(self.timezone)
        if self.type is ScheduleType.CRON:
            minute, hour, day, month, dow = _crontab_fields(self.cron or "")
            return CronTrigger(
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=dow,
                start_date=self.start_at,
                end_date=self.end_at,
                timezone=tz,
            )
        if self.type is ScheduleType.INTERVAL:
            start = self.start_at or self.anchor or datetime(2000, 1, 1, tzinfo=timezone.utc)
            return IntervalTrigger(
                seconds=self.interval_s or 0, start_date=start, end_date=self.end_at, timezone=tz
            )
        if self.type is ScheduleType.DATE:
            return DateTrigger(run_date=self.run_at, timezone=tz)
        return None


def validate_schedule(
    schedule_type: ScheduleType | str | None,
    *,
    cron: str | None = None,
    interval_s: int | float | str | None = None,
    run_at: datetime | str | None = None,
    schedule_start_at: datetime | str | None = None,
    schedule_end_at: datetime | str | None = None,
    timezone: str | None = "UTC",
    overlap: OverlapPolicy | str | None = OverlapPolicy.SKIP,
    now: datetime | None = None,
    allow_past: bool = False,
) -> Schedule:
    """Check a schedule and return it normalized; raise ``ValidationError(field=...)``.

    Arguments are named like the ``Parser`` columns. ``interval_s`` takes seconds or text such
    as ``90s``, ``15m``, ``2h``, ``1h30m``. Datetimes take ISO 8601 text; naive ones are read in
    ``timezone``. Fields that do not belong to the type are dropped. With no type, the one of
    ``cron`` / ``interval_s`` / ``run_at`` that is given picks it.
    """
    tz_name = _timezone(timezone)
    policy = _enum(OverlapPolicy, overlap or OverlapPolicy.SKIP, "overlap")
    kind = _schedule_type(schedule_type, cron, interval_s, run_at)
    start = _datetime(schedule_start_at, tz_name, "schedule_start_at")
    end = _datetime(schedule_end_at, tz_name, "schedule_end_at")
    if start and end and end <= start:
        raise ValidationError("the schedule must end after it starts", field="schedule_end_at")
    schedule = Schedule(kind, start_at=start, end_at=end, timezone=tz_name, overlap=policy)
    if kind is ScheduleType.CRON:
        schedule = replace(schedule, cron=_cron(cron, tz_name))
    elif kind is ScheduleType.INTERVAL:
        schedule = replace(schedule, interval_s=parse_interval(interval_s))
    elif kind is ScheduleType.DATE:
        when = _datetime(run_at, tz_name, "run_at")
        if when is None:
            raise ValidationError("a date schedule needs run_at", field="run_at")
        if not allow_past and when <= (now or utcnow()):
            raise ValidationError(f"run_at {when.isoformat()} is in the past", field="run_at")
        schedule = replace(schedule, run_at=when, start_at=None, end_at=None)
    return schedule


def parse_interval(value: int | float | str | None) -> int:
    """Seconds from ``3600``, ``"3600"``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1h30m"``, ``"1d"``."""
    seconds: float
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise ValidationError("an interval schedule needs interval_s", field="interval_s")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _INTERVAL_RE.findall(text)
            if not parts or _INTERVAL_RE.sub("", text).strip():
                raise ValidationError(
                    f"interval {value!r} is not seconds or a duration like 90s, 15m, 2h, 1h30m",
                    field="interval_s",
                ) from None
            seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    if not seconds > 0 or seconds != seconds:
        raise ValidationError("interval must be > 0 seconds", field="interval_s")
    return max(1, round(seconds))


def fire_times(
    schedule: Schedule, after: datetime, until: datetime | None = None, count: int = 5
) -> list[datetime]:
    """Up to ``count`` due times strictly after ``after`` (and at most ``until``), in UTC."""
    trigger = schedule.trigger()
    if trigger is None:
        return []
    out: list[datetime] = []
    t = trigger.get_next_fire_time(None, after + _TICK)
    while t is not None and len(out) < count:
        t = t.astimezone(timezone.utc)
        if t > after:
            if until is not None and t > until:
                break
            out.append(t)
        t = trigger.get_next_fire_time(t, t + _TICK)
    return out


def next_fire_times(parser: Any, now: datetime | None = None, count: int = 5) -> list[datetime]:
    """When the scheduler will create the parser's next runs; [] if disabled or unscheduled."""
    if not parser.enabled or parser.schedule_type is None:
        return []
    try:
        schedule = Schedule.from_parser(parser)
    except ValidationError:
        return []  # a bad stored schedule never fires (the scheduler logs it)
    return fire_times(schedule, (now or utcnow()) - _TICK, count=count)


def next_run_at(parser: Any, now: datetime | None = None) -> datetime | None:
    """When the scheduler will next create a run of the parser; None if unscheduled or
    disabled. Computed from the schedule, never stored."""
    times = next_fire_times(parser, now, count=1)
    return times[0] if times else None


@dataclass(frozen=True)
class Plan:
    """Where a (re)loaded schedule starts: a catch-up occurrence, the first one missed beyond
    the grace time, and the next one in the future."""

    catch_up: datetime | None
    missed: datetime | None
    next: datetime | None


def plan_start(schedule: Schedule, since: datetime, now: datetime, grace_s: float) -> Plan:
    """Coalescing misfire policy: of the occurrences in ``(since, now]`` only the latest one
    within ``grace_s`` of ``now`` runs (one catch-up run, not a storm); older ones are missed."""
    window = max(since, now - timedelta(seconds=grace_s))
    first = fire_times(schedule, since, count=1)
    missed = first[0] if first and first[0] <= window else None
    catch_up = None
    for t in _iter_times(schedule, window, now):
        catch_up = t
    upcoming = fire_times(schedule, now, count=1)
    return Plan(catch_up, missed, upcoming[0] if upcoming else None)


def _iter_times(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    times: list[datetime] = []
    while batch := fire_times(schedule, after, until, count=500):
        times.extend(batch)
        after = batch[-1]
    return times


def _schedule_type(
    value: ScheduleType | str | None, cron: Any, interval_s: Any, run_at: Any
) -> ScheduleType | None:
    if value not in (None, ""):
        return _enum(ScheduleType, value, "schedule_type")
    given = [
        kind
        for kind, v in (
            (ScheduleType.CRON, cron),
            (ScheduleType.INTERVAL, interval_s),
            (ScheduleType.DATE, run_at),
        )
        if v not in (None, "")
    ]
    if len(given) > 1:
        raise ValidationError(
            "set schedule_type: more than one of cron, interval_s, run_at is given",
            field="schedule_type",
        )
    return given[0] if given else None


def _enum(cls: Any, value: Any, field: str) -> Any:
    if isinstance(value, str) and value.upper() in cls.__members__:
        return cls[value.upper()]  # a member's name, as some form libraries send it
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise ValidationError(f"{field} must be one of: {allowed}", field=field) from None


def _timezone(name: str | None) -> str:
    name = (name or "UTC").strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown timezone {name!r} (use an IANA name like Europe/Moscow)", field="timezone"
        ) from None
    return name


def _datetime(value: datetime | str | None, tz_name: str, field: str) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValidationError(
                f"{field} {value!r} is not an ISO 8601 datetime", field=field
            ) from None
    if not isinstance(value, datetime):
        raise ValidationError(f"{field} must be a datetime", field=field)
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(tz_name))
    return value.astimezone(timezone.utc)


def _cron(expr: str | None, tz_name: str) -> str:
    expr = " ".join((expr or "").split())
    if not expr:
        raise ValidationError("a cron schedule needs a cron expression", field="cron")
    try:
        minute, hour, day, month, dow = _crontab_fields(expr)
        CronTrigger.from_crontab(f"{minute} {hour} {day} {month} {dow}", timezone=tz_name)
    except ValueError as exc:
        raise ValidationError(
            f"invalid cron expression {expr!r}: {exc} "
            "(5 fields: minute hour day-of-month month day-of-week)",
            field="cron",
        ) from None
    return expr


def _crontab_fields(expr: str) -> list[str]:
    """The five crontab fields, the weekday one rewritten into APScheduler's day names."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    fields[4] = _weekdays(fields[4])
    return fields


def _weekdays(field: str) -> str:
    if not any(c.isdigit() for c in field):
        return field  # *, names: the same in both
    days: set[int] = set()
    for part in field.split(","):
        rng, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else (1 if not step_text else 0)
        if step < 1:
            raise ValueError(f"bad step in day of week {part!r}")
        if rng == "*":
            lo, hi = 0, 6
        else:
            a, _, b = rng.partition("-")
            lo = _day_number(a)
            hi = _day_number(b) if b else (lo if not step_text else 6)
        if hi < lo:
            raise ValueError(f"day of week range {part!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_CRON_DAYS[d] for d in sorted(days))


def _day_number(text: str) -> int:
    text = text.strip().lower()
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text[:3] in _CRON_DAYS:
        return _CRON_DAYS.index(text[:3])
    raise ValueError(f"bad day of week {text!r}")
