"""Throughput: N hello-world runs through worker processes x threads, with the CPU time per
run spent in Parseq's worker vs in the script. Target (issue 10): >= 60 runs/s on 2 cores."""

from __future__ import annotations

import argparse
import os
import time

import psutil

from bench.stack import Stack


def services() -> dict[str, list[psutil.Process]]:
    """The machine's PostgreSQL and RabbitMQ processes, to report their CPU too."""
    found: dict[str, list[psutil.Process]] = {"PostgreSQL": [], "RabbitMQ": []}
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        if name.startswith("postgres"):
            found["PostgreSQL"].append(proc)
        elif name.startswith("beam"):
            found["RabbitMQ"].append(proc)
    return found


def cpu_s(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of ``procs`` (ones gone meanwhile count 0)."""
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=1000, help="runs")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--threads", type=int, default=4, help="threads per worker")
    # python -m bench a b -- ARGS gives ARGS to each: options for another benchmark are ignored.
    opts, _ = ap.parse_known_args(argv)

    from parseq import runs
    from parseq.models import Parser, Run, RunStatus, db

    with Stack(workers=opts.workers, threads=opts.threads) as stack:
        procs = [psutil.Process(p.pid) for p in stack.procs]
        with stack.app.app_context():
            parser = Parser(name="hello", path="hello.py")
            db.session.add(parser)
            db.session.commit()
            runs.create_run(parser)  # warm up: env, connections
            while db.session.execute(
                db.select(db.func.count()).where(
                    Run.status.in_([RunStatus.PENDING, RunStatus.RUNNING])
                )
            ).scalar():
                db.session.rollback()
                time.sleep(0.01)
            others = {
                **services(),
                "S3 endpoint (moto)": [psutil.Process(stack.moto.pid)],
                "enqueueing (this process)": [psutil.Process()],
            }
            others_cpu0 = {name: cpu_s(ps) for name, ps in others.items()}
            cpu0 = [p.cpu_times() for p in procs]
            t0 = time.perf_counter()
            ids = [runs.create_run(parser).id for _ in range(opts.n)]
            while True:
                left = db.session.execute(
                    db.select(db.func.count()).where(
                        Run.id.in_(ids), Run.status.in_([RunStatus.PENDING, RunStatus.RUNNING])
                    )
                ).scalar()
                if not left:
                    break
                db.session.rollback()
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            cpu1 = [p.cpu_times() for p in procs]
            others_cpu = {name: cpu_s(ps) - others_cpu0[name] for name, ps in others.items()}
            failed = db.session.execute(
                db.select(db.func.count()).where(Run.id.in_(ids), Run.status != RunStatus.COMPLETED)
            ).scalar()
    own = sum((b.user + b.system) - (a.user + a.system) for a, b in zip(cpu0, cpu1, strict=False))
    child = sum(
        (b.children_user + b.children_system) - (a.children_user + a.children_system)
        for a, b in zip(cpu0, cpu1, strict=False)
    )
    rate = opts.n / elapsed
    print(f"throughput on {os.cpu_count()} cores: {opts.workers} workers x {opts.threads} threads")
    print(
        f"  {opts.n} runs in {elapsed:.1f} s = {rate:.1f} runs/s (target >= 60); "
        f"{failed} not completed"
    )
    print(
        f"  CPU per run: Parseq worker {own / opts.n * 1000:.1f} ms, "
        f"script {child / opts.n * 1000:.1f} ms"
    )
    print("  CPU per run elsewhere on the same cores:")
    for name, seconds in others_cpu.items():
        print(f"    {name:26} {seconds / opts.n * 1000:5.1f} ms")
    total = own + child + sum(others_cpu.values())
    print(
        f"  all CPU per run {total / opts.n * 1000:.1f} ms: at most "
        f"{(os.cpu_count() or 1) * opts.n / total:.0f} runs/s on {os.cpu_count()} cores"
    )
    return rate


if __name__ == "__main__":
    main()
