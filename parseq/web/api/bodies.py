"""Parsers and runs as the API answers them: the models' own ``to_dict`` plus links, the
detail of one parser, and a run's notifications. The response schemas dump these."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from parseq.db.models import Parser, Run, ScheduleSkip, db, iso
from parseq.services import notify, schedules
from parseq.web.api.base import PREFIX


def file_url(run_id: int, name: str) -> str:
    return f"{PREFIX}/runs/{run_id}/files/{quote(name)}"


def files_json(run: Run) -> list[dict[str, Any]]:
    """A run's files, each with its download URL."""
    return [{**f.to_dict(), "url": file_url(run.id, f.name)} for f in run.files]


def run_json(run: Run, notifications: bool = False) -> dict[str, Any]:
    """A run with its own URL and a download URL per file (and, for one run, its
    notification deliveries)."""
    body = {**run.to_dict(), "url": f"{PREFIX}/runs/{run.id}", "files": files_json(run)}
    if notifications:
        body["notifications"] = notify.deliveries_json(run.id)
    return body


def parser_json(parser: Parser, detail: bool = False) -> dict[str, Any]:
    """A parser; in ``detail`` also its last run, its next 5 fire times and its last skipped
    occurrences."""
    body = {**parser.to_dict(), "next_run_at": iso(schedules.next_run_at(parser))}
    if detail:
        latest = db.session.execute(
            db.select(Run).where(Run.parser_id == parser.id).order_by(Run.id.desc()).limit(1)
        ).scalar_one_or_none()
        skips = db.session.execute(
            db.select(ScheduleSkip)
            .where(ScheduleSkip.parser_id == parser.id)
            .order_by(ScheduleSkip.scheduled_for.desc())
            .limit(5)
        ).scalars()
        upcoming = schedules.next_fire_times(parser, count=5)
        body["next_fire_times"] = [t.isoformat() for t in upcoming]
        body["skipped"] = [s.to_dict() for s in skips]
        body["last_run"] = run_json(latest) if latest else None
    return body
