"""The scheduler service on the embedded default (SQLite, in-memory broker), short intervals."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import (
    OverlapPolicy,
    Parser,
    Run,
    RunStatus,
    RunTrigger,
    ScheduleSkip,
    ScheduleType,
    db,
    utcnow,
)
from parseq.scheduler.service import SchedulerService, fire, sweep_pending
from parseq.services import runs
from parseq.web.app import create_app, init_db
from parseq.worker.actors import start_worker
from tests.conftest import add_parser, api_client, wait_for_run

SYNC_S = 0.2


@pytest.fixture
def sched_app(make_config: Callable[..., Config]) -> Iterator[Flask]:
    """SQLite app (no worker: scheduled runs stay pending) whose scheduler syncs every 0.2 s."""
    app = create_app(make_config(scheduler_sync_interval_s=SYNC_S, sweep_interval_s=0.3))
    init_db(app)
    with app.app_context():
        yield app
        db.engine.dispose()


@pytest.fixture
def service(sched_app: Flask) -> Iterator[SchedulerService]:
    svc = SchedulerService(sched_app)
    svc.start()
    yield svc
    svc.stop()


def scheduled_runs(parser_id: int) -> list[Run]:
    db.session.expire_all()
    return list(
        db.session.execute(
            db.select(Run).where(Run.parser_id == parser_id).order_by(Run.scheduled_for)
        ).scalars()
    )


def wait_until(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def every_second(name: str, **fields: object) -> Parser:
    values: dict[str, object] = {
        "schedule_type": ScheduleType.INTERVAL,
        "interval_s": 1,
        "overlap": OverlapPolicy.ALLOW,
    }
    return add_parser(name, "echo_env.py", **{**values, **fields})


def test_interval_schedule_creates_one_pending_run_per_occurrence(service) -> None:  # type: ignore[no-untyped-def]
    parser = every_second("tick")

    def three_enqueued() -> bool:
        # The scheduler commits a due run, then sends it and marks it enqueued: wait for the mark.
        first = scheduled_runs(parser.id)[:3]
        return len(first) == 3 and all(r.enqueued_at is not None for r in first)

    wait_until(three_enqueued)
    found = scheduled_runs(parser.id)[:3]
    dues = [r.scheduled_for for r in found]
    assert len(set(dues)) == len(dues)
    for run in found:
        assert run.trigger is RunTrigger.SCHEDULE
        assert run.status is RunStatus.PENDING
        assert run.enqueued_at is not None
        # On the grid counted from the parser's creation, created at or after its due time.
        assert (run.scheduled_for - parser.created_at).total_seconds() % 1 == pytest.approx(0)
        assert run.queued_at >= run.scheduled_for


def test_date_schedule_fires_exactly_once(service) -> None:  # type: ignore[no-untyped-def]
    when = (utcnow() + timedelta(seconds=1)).replace(microsecond=0)
    parser = add_parser("once", "echo_env.py", schedule_type=ScheduleType.DATE, run_at=when)
    wait_until(lambda: scheduled_runs(parser.id))
    time.sleep(1.0)
    assert [r.scheduled_for for r in scheduled_runs(parser.id)] == [when]


def test_cron_schedule_catches_up_the_latest_occurrence_once(sched_app: Flask) -> None:
    parser = add_parser(
        "minutely",
        "echo_env.py",
        schedule_type=ScheduleType.CRON,
        cron="* * * * *",
        overlap=OverlapPolicy.ALLOW,
    )
    # As if the schedule was saved 10 minutes ago and the scheduler was down since.
    saved = utcnow() - timedelta(minutes=10)
    db.session.execute(db.update(Parser).values(updated_at=saved, created_at=saved))
    db.session.commit()
    svc = SchedulerService(sched_app)
    started = utcnow()
    svc.start()
    try:
        wait_until(lambda: scheduled_runs(parser.id))
        time.sleep(0.5)
    finally:
        svc.stop()
    # One catch-up run, not ten (a later one only if the test crossed a minute boundary).
    found = [r for r in scheduled_runs(parser.id) if r.scheduled_for <= started]
    assert [r.scheduled_for for r in found] == [started.replace(second=0, microsecond=0)]
    skips = db.session.execute(db.select(ScheduleSkip)).scalars().all()
    assert [s.reason for s in skips] == [
        "missed: no scheduler was running (coalesced into one catch-up run)"
    ]
    assert skips[0].scheduled_for <= found[0].scheduled_for - timedelta(minutes=4)


def test_disable_stops_runs_and_enable_resumes_them(service) -> None:  # type: ignore[no-untyped-def]
    parser = every_second("toggled")
    wait_until(lambda: scheduled_runs(parser.id))
    parser.enabled = False
    db.session.commit()
    time.sleep(SYNC_S * 2 + 0.2)  # the documented delay: one sync interval (+ a firing)
    stopped_at = len(scheduled_runs(parser.id))
    time.sleep(2.0)
    assert len(scheduled_runs(parser.id)) == stopped_at
    assert parser.id not in service._jobs

    parser = db.session.get(Parser, parser.id)
    parser.enabled = True
    db.session.commit()
    wait_until(lambda: len(scheduled_runs(parser.id)) > stopped_at)


def test_editing_the_schedule_takes_effect_without_restart(service) -> None:  # type: ignore[no-untyped-def]
    parser = add_parser(
        "edited",
        "echo_env.py",
        schedule_type=ScheduleType.CRON,
        cron="0 0 1 1 *",
        overlap=OverlapPolicy.ALLOW,
    )
    wait_until(lambda: parser.id in service._jobs)
    assert scheduled_runs(parser.id) == []
    parser.schedule_type, parser.cron, parser.interval_s = ScheduleType.INTERVAL, None, 1
    db.session.commit()
    wait_until(lambda: len(scheduled_runs(parser.id)) >= 2)

    db.session.delete(db.session.get(Parser, parser.id))
    db.session.commit()
    wait_until(lambda: parser.id not in service._jobs)


def test_overlap_skip_records_why_nothing_ran(service, sched_app: Flask) -> None:  # type: ignore[no-untyped-def]
    parser = every_second("busy", overlap=OverlapPolicy.SKIP)
    wait_until(lambda: db.session.execute(db.select(ScheduleSkip.id)).first())
    found = scheduled_runs(parser.id)
    assert len(found) == 1  # it stays pending (no worker), so later occurrences skip
    skip = db.session.execute(db.select(ScheduleSkip)).scalars().first()
    assert skip.reason == f"skipped: run {found[0].id} was still pending"
    assert skip.scheduled_for > found[0].scheduled_for

    body = api_client(sched_app).get("/api/v1/parsers/busy").json
    assert body["skipped"][0]["reason"].startswith("skipped: run")


def test_an_occurrence_makes_at_most_one_run(sched_app: Flask) -> None:
    parser = every_second("twice")
    due = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = due + timedelta(seconds=1)
    first = fire(parser.id, due, grace_s=60, now=now)
    assert first is not None
    assert fire(parser.id, due, grace_s=60, now=now) is None
    assert fire(parser.id, due + timedelta(seconds=1), grace_s=0.5, now=now + timedelta(2)) is None
    assert len(scheduled_runs(parser.id)) == 1
    skip = db.session.execute(db.select(ScheduleSkip)).scalar_one()
    assert skip.reason.startswith("missed: ")


def test_sweeper_resends_runs_the_broker_never_took(sched_app: Flask) -> None:
    parser = add_parser("swept", "echo_env.py")
    run = runs.create_run(parser, enqueue=False)
    assert run.enqueued_at is None
    assert sweep_pending(sched_app, older_than_s=60) == 0  # too young
    assert sweep_pending(sched_app, older_than_s=0) == 1
    db.session.expire_all()
    assert db.session.get(Run, run.id).enqueued_at is not None
    assert sweep_pending(sched_app, older_than_s=0) == 0  # the broker has it now
    assert sweep_pending(sched_app, older_than_s=0, resend_all=True) == 1


def test_embedded_scheduled_run_completes(make_config: Callable[..., Config]) -> None:
    app = create_app(make_config(scheduler_sync_interval_s=SYNC_S))
    init_db(app)
    worker = start_worker(app, threads=1)
    svc = SchedulerService(app)
    svc.start()
    try:
        with app.app_context():
            when = utcnow() + timedelta(seconds=0.5)
            parser = add_parser("soon", "echo_env.py", schedule_type="date", run_at=when)
            wait_until(lambda: scheduled_runs(parser.id))
            run = wait_for_run(scheduled_runs(parser.id)[0].id, timeout_s=20)
            assert run.status is RunStatus.COMPLETED, run.error
            assert run.trigger is RunTrigger.SCHEDULE
    finally:
        svc.stop()
        worker.stop()
        with app.app_context():
            db.engine.dispose()


def test_api_shows_the_schedule_and_next_fire_times(sched_app: Flask) -> None:
    add_parser(
        "weekdays",
        "echo_env.py",
        schedule_type=ScheduleType.CRON,
        cron="0 9 * * 1-5",
        timezone="Europe/Moscow",
    )
    add_parser("manual", "echo_env.py")
    add_parser("off", "echo_env.py", schedule_type="interval", interval_s=60, enabled=False)
    client = api_client(sched_app)
    body = client.get("/api/v1/parsers/weekdays").json
    assert body["schedule"] == {
        "type": "cron",
        "cron": "0 9 * * 1-5",
        "interval_s": None,
        "run_at": None,
        "start_at": None,
        "end_at": None,
        "timezone": "Europe/Moscow",
        "overlap": "skip",
    }
    times = [datetime.fromisoformat(t) for t in body["next_fire_times"]]
    assert len(times) == 5
    assert times == sorted(times) and times[0] > utcnow()
    assert all(t.weekday() < 5 and (t.hour, t.minute) == (6, 0) for t in times)
    assert body["next_run_at"] == body["next_fire_times"][0]
    listed = {p["name"]: p for p in client.get("/api/v1/parsers").json["parsers"]}
    assert listed["weekdays"]["next_run_at"] == body["next_run_at"]
    assert listed["manual"]["schedule"] is None and listed["manual"]["next_run_at"] is None
    assert listed["off"]["next_run_at"] is None  # disabled: no automatic runs
    assert client.get("/api/v1/parsers/off").json["next_fire_times"] == []


def test_maintenance_jobs_run_while_the_scheduler_is_active(sched_app: Flask) -> None:
    calls: list[Flask] = []
    svc = SchedulerService(sched_app)
    svc.add_maintenance("probe", calls.append, interval_s=0.1)
    assert [m.name for m in svc.maintenance] == ["sweep_pending", "probe"]
    svc.start()
    try:
        wait_until(lambda: len(calls) >= 2)
    finally:
        svc.stop()
    assert calls[0] is sched_app
