"""Throughput: N hello-world runs through worker processes x threads, with the CPU time per
run spent in Parseq's worker vs in the script. Target (issue 10): >= 60 runs/s on 2 cores."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
    return cpu_split(procs)[0]


def fork_servers(workers: list[psutil.Process]) -> list[psutil.Process]:
    """The workers' fork servers (parseq.sandbox.zygote): the scripts they fork are their
    children."""
    found = []
    for worker in workers:
        for child in worker.children():
            try:
                if any(part.endswith("zygote.py") for part in child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
    return found


def cpu_split(procs: list[psutil.Process]) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of ``procs`` (ones gone meanwhile count 0)."""
    own = child = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        own += t.user + t.system
        child += t.children_user + t.children_system
    return own, child


def produce(app: Any, parser_id: int, n: int, producers: int) -> list[int]:
    """Create and enqueue ``n`` runs of the parser from ``producers`` threads; their ids."""
    from parseq.db.models import Parser, db
    from parseq.services import runs

    def create(_: int) -> int:
        with app.app_context():
            return runs.create_run(db.session.get(Parser, parser_id)).id

    with ThreadPoolExecutor(producers) as pool:
        return list(pool.map(create, range(n)))


def fresh_start_cpu_ms(python: str, n: int = 30) -> float:
    """CPU of one ``<python> -c pass``: the machine's speed at the moment (it drifts), and what
    a run forked from a fork server no longer pays."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(n):
        subprocess.run([python, "-c", "pass"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return spent / n * 1000


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=1000, help="runs")
    ap.add_argument("--workers", type=int, default=4, help="worker processes")
    ap.add_argument("--threads", type=int, default=2, help="threads per worker")
    ap.add_argument(
        "--producers",
        type=int,
        default=4,
        help="threads creating the runs, as several clients and the scheduler would",
    )
    ap.add_argument(
        "--prints",
        action="store_true",
        help="a hello world that prints a line: its log is stored too (2 PUTs per run, not 1)",
    )
    ap.add_argument(
        "--fork-servers",
        type=int,
        default=None,
        help="PARSEQ_FORK_SERVERS of the workers (0: a fresh interpreter per run)",
    )
    # python -m bench a b -- ARGS gives ARGS to each: options for another benchmark are ignored.
    opts, _ = ap.parse_known_args(argv)

    from parseq.db.models import Parser, Run, RunStatus, db
    from parseq.services import runs
    from parseq.worker import execution

    settings = {}
    if opts.fork_servers is not None:
        settings["PARSEQ_FORK_SERVERS"] = str(opts.fork_servers)
    with Stack(workers=opts.workers, threads=opts.threads, settings=settings) as stack:
        procs = [psutil.Process(p.pid) for p in stack.procs]
        with stack.app.app_context():
            parser = Parser(name="hello", path="hello_print.py" if opts.prints else "hello.py")
            db.session.add(parser)
            db.session.commit()
            for _ in range(opts.workers * opts.threads):  # warm up: env, connections, servers
                runs.create_run(parser)
            while db.session.execute(
                db.select(db.func.count()).where(
                    Run.status.in_([RunStatus.PENDING, RunStatus.RUNNING])
                )
            ).scalar():
                db.session.rollback()
                time.sleep(0.01)
            python = str(execution.interpreter_for(parser))
            floor_ms = fresh_start_cpu_ms(python)
            others = {
                **services(),
                "S3 endpoint (moto)": [moto := psutil.Process(stack.moto.pid), *moto.children()],
                "enqueueing (this process)": [psutil.Process()],
            }
            others_cpu0 = {name: cpu_s(ps) for name, ps in others.items()}
            servers = fork_servers(procs)  # started by the warm-up run
            servers0 = cpu_split(servers)
            cpu0 = [p.cpu_times() for p in procs]
            t0 = time.perf_counter()
            ids = produce(stack.app, parser.id, opts.n, opts.producers)
            enqueued = time.perf_counter() - t0
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
            late = [p for p in fork_servers(procs) if p not in servers]
            servers1 = cpu_split(servers + late)
            others_cpu = {name: cpu_s(ps) - others_cpu0[name] for name, ps in others.items()}
            timings = db.session.execute(
                db.select(Run.queued_at, Run.started_at, Run.finished_at).where(Run.id.in_(ids))
            ).all()
            failed = db.session.execute(
                db.select(db.func.count()).where(Run.id.in_(ids), Run.status != RunStatus.COMPLETED)
            ).scalar()
    own = sum((b.user + b.system) - (a.user + a.system) for a, b in zip(cpu0, cpu1, strict=False))
    child = sum(
        (b.children_user + b.children_system) - (a.children_user + a.children_system)
        for a, b in zip(cpu0, cpu1, strict=False)
    )
    # Scripts forked by a fork server are its children, not the worker's.
    server_own = servers1[0] - servers0[0]
    child += servers1[1] - servers0[1]
    rate = opts.n / elapsed
    print(
        f"throughput on {os.cpu_count()} cores: {opts.workers} workers x {opts.threads} "
        f"threads, runs created by {opts.producers} threads, "
        f"{'a hello world that prints (log stored)' if opts.prints else 'a silent hello world'}"
    )
    print(
        f"  {opts.n} runs in {elapsed:.1f} s = {rate:.1f} runs/s (target >= 60); "
        f"{failed} not completed; all enqueued after {enqueued:.1f} s"
    )
    waits = [(r.started_at - r.queued_at).total_seconds() for r in timings if r.started_at]
    walls = [(r.finished_at - r.started_at).total_seconds() for r in timings if r.finished_at]
    print(
        f"  per run, median: {statistics.median(waits) * 1000:.0f} ms queued, "
        f"{statistics.median(walls) * 1000:.0f} ms from start to end"
    )
    print(
        f"  CPU per run: Parseq worker {own / opts.n * 1000:.1f} ms, "
        f"its {len(servers)} fork servers {server_own / opts.n * 1000:.1f} ms, "
        f"script {child / opts.n * 1000:.1f} ms"
    )
    print("  CPU per run elsewhere on the same cores:")
    for name, seconds in others_cpu.items():
        print(f"    {name:26} {seconds / opts.n * 1000:5.1f} ms")
    print(f"  a fresh `python -c pass` costs {floor_ms:.1f} ms of CPU here now (machine speed)")
    total = own + server_own + child + sum(others_cpu.values())
    print(
        f"  all CPU per run {total / opts.n * 1000:.1f} ms: at most "
        f"{(os.cpu_count() or 1) * opts.n / total:.0f} runs/s on {os.cpu_count()} cores"
    )
    return rate


if __name__ == "__main__":
    main()
