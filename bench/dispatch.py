"""Dispatch latency: API POST -> first line of the script, and API POST -> run completed with
``output.txt`` stored, on PostgreSQL + RabbitMQ + S3, beside the bare interpreter floor.

Targets (issue 10): start p50 <= 40 ms, p99 <= 100 ms; completed p50 <= 60 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import time

from bench.stack import Stack, summary, wait_finished


def bare_floor(python: str, n: int) -> list[float]:
    """``<python> -c pass`` spawned from Python: what any subprocess runner pays."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - t0)
    return samples


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=100, help="measured runs")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument(
        "--prints",
        action="store_true",
        help="a hello world that prints a line: its log is stored too (2 PUTs per run, not 1)",
    )
    # python -m bench a b -- ARGS gives ARGS to each: options for another benchmark are ignored.
    opts, _ = ap.parse_known_args(argv)

    from parseq.db.models import Parser, db
    from parseq.services import runs
    from parseq.worker import execution

    with Stack(workers=1, threads=2) as stack:
        with stack.app.app_context():
            script = "hello_print.py" if opts.prints else "hello.py"
            db.session.add(Parser(name="hello", path=script))
            db.session.commit()
            python = str(execution.interpreter_for(runs.get_parser("hello")))
        headers = {"Content-Type": "application/json", **stack.auth_headers()}
        http_conn = http.client.HTTPConnection("127.0.0.1", stack.server.server_port)
        storage = stack.app.extensions["parseq"].storage
        starts, dones = [], []
        for i in range(opts.warmup + opts.n):
            t0 = time.time()
            http_conn.request("POST", "/api/v1/parsers/hello/runs", body="{}", headers=headers)
            resp = http_conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 202, body
            row = wait_finished(stack.app, body["id"])
            with stack.app.app_context():
                started = float(b"".join(storage.iter_bytes(f"runs/{body['id']}/output.txt")))
            if i >= opts.warmup:
                starts.append(started - t0)
                dones.append(row.finished_at.timestamp() - t0)
        floor = bare_floor(python, opts.n)

    what = "a hello world that prints (log stored)" if opts.prints else "a silent hello world"
    print(
        f"dispatch latency on {os.cpu_count()} cores (PostgreSQL + RabbitMQ + S3, 1 worker), {what}"
    )
    print(f"  bare floor  {python} -c pass : {summary(floor)}")
    print(f"  POST -> first script line     : {summary(starts)}   target p50<=40 p99<=100")
    print(f"  POST -> completed, stored     : {summary(dones)}   target p50<=60")
    ratio = statistics.median(starts) / statistics.median(floor)
    print(f"  start p50 / floor p50         : {ratio:.1f}x")
    return {"start_p50_s": statistics.median(starts), "done_p50_s": statistics.median(dones)}


if __name__ == "__main__":
    main()
