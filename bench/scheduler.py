"""Scheduler benchmark: N parsers on a 1-minute cron; how late are their runs created?

Prints p50/p99/max lateness of run creation (``queued_at - scheduled_for``) and the CPU the
scheduler used. On demand, not part of the tests:

    make bench BENCH=scheduler   or   .venv/bin/python -m bench scheduler -- --minutes 1
    options: [--parsers 1000] [--minutes 2] [--database-url URL]

Without ``--database-url`` it uses a fresh SQLite file; pass a PostgreSQL URL (an empty
database) to measure the production setup. The broker is in-memory and no worker runs, so
only the scheduler's own work is measured (the parsers' no-op script never executes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from parseq.core.config import Config
from parseq.db.models import OverlapPolicy, Parser, Run, RunTrigger, ScheduleType, db, utcnow
from parseq.scheduler.service import SchedulerService
from parseq.web.app import create_app, init_db


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parsers", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=2)
    ap.add_argument("--database-url", default="")
    # python -m bench a b -- ARGS gives ARGS to each: options for another benchmark are ignored.
    args, _ = ap.parse_known_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="parseq-bench-"))
    (tmp / "parsers").mkdir()
    (tmp / "parsers" / "noop.py").write_text("pass\n")
    config = Config.from_env(
        environ={},
        var_dir=tmp / "var",
        parsers_dir=tmp / "parsers",
        database_url=args.database_url,
        broker_url="memory://",
        log_level="WARNING",
    )
    app = create_app(config)
    init_db(app)
    with app.app_context():
        db.session.add_all(
            Parser(
                name=f"bench-{i:05d}",
                path="noop.py",
                schedule_type=ScheduleType.CRON,
                cron="* * * * *",
                overlap=OverlapPolicy.ALLOW,  # no worker: runs stay pending
            )
            for i in range(args.parsers)
        )
        db.session.commit()

    service = SchedulerService(app)
    started = utcnow()
    first_due = started.replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = first_due + timedelta(minutes=args.minutes - 1, seconds=20)
    print(f"{args.parsers} parsers, every minute, {args.minutes} occurrence(s) from {first_due}")
    cpu0, wall0 = time.process_time(), time.monotonic()
    service.start()
    time.sleep(max(0.0, (end - utcnow()).total_seconds()))
    service.stop()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0

    with app.app_context():
        rows = db.session.execute(
            db.select(Run.queued_at, Run.scheduled_for).where(Run.trigger == RunTrigger.SCHEDULE)
        ).all()
    late = sorted((q - s).total_seconds() for q, s in rows) or [float("nan")]
    expected = args.parsers * args.minutes
    p50 = statistics.median(late)
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
    print(f"runs created: {len(rows)} of {expected} expected")
    print(
        f"lateness of run creation: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {late[-1] * 1000:.0f} ms (target p99 <= 1000 ms)"
    )
    print(f"scheduler CPU: {cpu:.2f} s in {wall:.0f} s wall ({100 * cpu / wall:.1f}% of one core)")
    return {"p50_s": p50, "p99_s": p99, "cpu_s": cpu, "wall_s": wall}


if __name__ == "__main__":
    main()
