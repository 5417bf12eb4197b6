"""Benchmark of parser state shared through storage (issue #21): what a run pays for it.

A parser's state folder of 1 MB (``state.json`` and 100 cached pages of 10 KB) in which each
run changes one page. Per run, the worker takes the lease and materializes the folder
(:func:`parseq.worker.state.acquire`), then commits and releases it (``HeldState.commit`` /
``release``); the parser's own work is not timed. Two placements:

- *same machine*: the worker that ran last runs again (one manifest read, nothing downloaded);
- *alternating*: two machines (folders) take turns, each downloading the page the other changed.

On PostgreSQL + S3 (moto, as in ``bench/stack.py``) and on the embedded default (SQLite + local
storage), side by side with local state as it was before: the folder used in place, 0 ms.
Target: <= 50 ms p50 added per run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask

from bench.stack import Stack, pct
from parseq.core.config import Config
from parseq.db.models import Parser, Run, RunStatus, db, utcnow
from parseq.web.app import create_app, init_db
from parseq.worker import state

PAGES = 100
PAGE_BYTES = 10_000
TARGET_MS = 50.0


def fill(state_dir: Path) -> None:
    """1 MB: state.json and 100 page-cache entries, as the SDK's ``fetch`` writes them."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").write_text('{"checkpoint:pages": {"next": 101}}')
    for i in range(PAGES):
        key = f"{i:064x}"
        base = state_dir / "cache" / key[:2]
        base.mkdir(parents=True, exist_ok=True)
        (base / f"{key}.body").write_bytes(os.urandom(PAGE_BYTES))
        (base / f"{key}.json").write_text(f'{{"url": "https://example.com/{i}"}}')


def change_one_page(state_dir: Path, n: int) -> None:
    key = f"{n % PAGES:064x}"
    (state_dir / "cache" / key[:2] / f"{key}.body").write_bytes(os.urandom(PAGE_BYTES))


def new_run(parser_id: int) -> Run:
    run = Run(parser_id=parser_id, status=RunStatus.RUNNING, worker_id="bench", started_at=utcnow())
    db.session.add(run)
    db.session.commit()
    return run


def per_run_ms(app: Flask, dirs: list[Path], rounds: int) -> list[float]:
    """Milliseconds each run spends on its state (lease, materialize, commit, release); runs
    go round ``dirs`` (one folder per machine)."""
    config: Config = app.extensions["parseq"].config
    with app.app_context():
        parser = Parser(name=f"bench-state-{uuid.uuid4().hex[:6]}", path="x.py")
        db.session.add(parser)
        db.session.commit()
        fill(dirs[0])
        samples = []
        for n in range(rounds + 1):
            run = new_run(parser.id)
            state_dir = dirs[n % len(dirs)]
            started = time.perf_counter()
            held = state.acquire(run, config, state_dir, requeue=False)
            assert held is not None
            added = time.perf_counter() - started
            change_one_page(state_dir, n)  # the parser's work: not timed
            started = time.perf_counter()
            warnings = held.commit()
            held.release()
            added += time.perf_counter() - started
            assert not warnings, warnings
            if n:  # run 0 uploads the whole folder once
                samples.append(added * 1000)
        return samples


def line(label: str, samples: list[float]) -> str:
    verdict = "met" if statistics.median(samples) <= TARGET_MS else "NOT met"
    return (
        f"{label}: p50 {statistics.median(samples):.1f} ms, p90 {pct(samples, 90):.1f} ms "
        f"(target {TARGET_MS:g} ms p50: {verdict})"
    )


def floors(app: Flask, tmp: Path, rounds: int) -> str:
    """What one S3 PUT of 10 KB and one PostgreSQL round trip cost here, now: a commit needs two
    PUTs (the page, the manifest) and the lease three statements (take, publish, release)."""
    storage = app.extensions["parseq"].storage
    page = tmp / "floor"
    page.write_bytes(os.urandom(PAGE_BYTES))
    puts, queries = [], []
    with app.app_context():
        for _ in range(rounds):
            started = time.perf_counter()
            storage.put("floor/page", page)
            puts.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            with db.engine.begin() as conn:
                conn.execute(db.text("SELECT 1"))
            queries.append((time.perf_counter() - started) * 1000)
    return (
        f"floors: one S3 PUT p50 {statistics.median(puts):.1f} ms, "
        f"one PostgreSQL transaction p50 {statistics.median(queries):.1f} ms"
    )


@contextmanager
def embedded_app(root: Path) -> Iterator[Flask]:
    app = create_app(Config.from_env(environ={}, var_dir=root / "var", log_level="WARNING"))
    init_db(app)
    yield app
    with app.app_context():
        db.engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench state")
    parser.add_argument("--rounds", type=int, default=30)
    args, _ = parser.parse_known_args(argv)
    print(f"state folder: state.json + {PAGES} cached pages of {PAGE_BYTES} B; one page changes")
    print("local state (the folder used in place, as before #21): 0 ms added per run")
    with tempfile.TemporaryDirectory(prefix="parseq-bench-") as tmp:
        root = Path(tmp)
        with embedded_app(root) as app:
            for label, dirs in (("same", [root / "a"]), ("alternating", [root / "b", root / "c"])):
                samples = per_run_ms(app, dirs, args.rounds)
                print(line(f"SQLite + local storage, {label} machine(s)", samples))
    with Stack(workers=0) as stack:
        print(floors(stack.app, stack.tmp, args.rounds))
        for label, dirs in (
            ("same", [stack.tmp / "m1"]),
            ("alternating", [stack.tmp / "m2", stack.tmp / "m3"]),
        ):
            samples = per_run_ms(stack.app, dirs, args.rounds)
            print(line(f"PostgreSQL + S3 (moto), {label} machine(s)", samples))
