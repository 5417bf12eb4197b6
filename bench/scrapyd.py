"""Scrapyd side by side: the same trivial job (one item from a local file) scheduled on Scrapyd
(at its default 5 s poll and at 0.2 s) and on Parseq (PostgreSQL + RabbitMQ + S3): schedule ->
finished. Scrapyd and Scrapy are installed into a bench-only venv under ``var/bench/``.
Target (issue 10): Parseq >= 50x faster than Scrapyd's default.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.stack import REPO, Stack, free_port, summary, wait_finished

VENV = REPO / "var" / "bench" / "scrapyd-venv"
SPIDER = """
import scrapy


class One(scrapy.Spider):
    name = "one"

    def __init__(self, source="", **kwargs):
        super().__init__(**kwargs)
        self.start_urls = [f"file://{source}"]

    def parse(self, response):
        yield {"line": response.text.splitlines()[0]}
"""
SETTINGS = """
BOT_NAME = "benchproj"
SPIDER_MODULES = ["benchproj.spiders"]
LOG_LEVEL = "WARNING"
TELNETCONSOLE_ENABLED = False
ROBOTSTXT_OBEY = False
"""


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        uv = Path(sys.executable).parent / "uv"
        subprocess.run([str(uv), "venv", "-q", str(VENV)], check=True)
        subprocess.run(
            [str(uv), "pip", "install", "-q", "--python", str(python), "scrapyd==1.6.0", "scrapy"],
            check=True,
        )
    return python


def make_project(root: Path) -> None:
    (root / "scrapy.cfg").write_text(
        "[settings]\ndefault = benchproj.settings\nbench = benchproj.settings\n"
    )
    pkg = root / "benchproj"
    (pkg / "spiders").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text(SETTINGS)
    (pkg / "spiders" / "__init__.py").write_text("")
    (pkg / "spiders" / "one.py").write_text(SPIDER)


def scrapyd_runs(python: Path, source: Path, poll_s: float, n: int) -> list[float]:
    """Start Scrapyd with ``poll_interval = poll_s``; time schedule.json -> job finished."""
    root = Path(tempfile.mkdtemp(prefix="scrapyd-bench-"))
    make_project(root)
    port = free_port()
    (root / "scrapyd.conf").write_text(
        f"[scrapyd]\nbind_address = 127.0.0.1\nhttp_port = {port}\npoll_interval = {poll_s}\n"
        "logs_dir = logs\njobs_to_keep = 5\n\n[settings]\nbench = benchproj.settings\n"
    )
    proc = subprocess.Popen(
        [str(python), "-m", "scrapyd"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        conn = _wait_http(port)
        samples = []
        for i in range(n + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            job = _post(conn, "/schedule.json", project="bench", spider="one", source=str(source))
            assert job.get("status") == "ok", job
            while True:
                conn.request("GET", f"/status.json?job={job['jobid']}")
                state = json.loads(conn.getresponse().read())
                if state.get("currstate") == "finished":
                    break
                time.sleep(0.005)
            if i:
                samples.append(time.perf_counter() - t0)
        return samples
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_http(port: int) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/daemonstatus.json")
            conn.getresponse().read()
            return conn
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _post(conn: http.client.HTTPConnection, path: str, **fields: str) -> dict:
    body = urllib.parse.urlencode(fields)
    conn.request(
        "POST", path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    return json.loads(conn.getresponse().read())


def parseq_runs(source: Path, n: int) -> list[float]:
    from parseq.db.models import Parser, db

    with Stack(workers=1, threads=2) as stack:
        with stack.app.app_context():
            db.session.add(Parser(name="oneline", path="oneline.py"))
            db.session.commit()
        headers = {"Content-Type": "application/json", **stack.auth_headers()}
        conn = http.client.HTTPConnection("127.0.0.1", stack.server.server_port)
        body = json.dumps({"args": {"source": str(source)}})
        samples = []
        for i in range(n + 3):
            t0 = time.time()
            conn.request("POST", "/api/v1/parsers/oneline/runs", body=body, headers=headers)
            run_id = json.loads(conn.getresponse().read())["id"]
            row = wait_finished(stack.app, run_id)
            if i >= 3:
                samples.append(row.finished_at.timestamp() - t0)
        return samples


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5, help="jobs per Scrapyd setting")
    # python -m bench a b -- ARGS gives ARGS to each: options for another benchmark are ignored.
    opts, _ = ap.parse_known_args(argv)
    python = ensure_venv()
    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o755)  # parsers run as an unprivileged user when we are root
    source = folder / "data.txt"
    source.write_text("the one line\nanother\n")
    default = scrapyd_runs(python, source, 5.0, opts.n)
    fast = scrapyd_runs(python, source, 0.2, opts.n)
    ours = parseq_runs(source, max(opts.n, 20))
    print("schedule -> finished, one item from a local file")
    print(f"  Scrapyd 1.6, poll 5 s (default) : {summary(default)}")
    print(f"  Scrapyd 1.6, poll 0.2 s         : {summary(fast)}")
    print(f"  Parseq (PG + RabbitMQ + S3)     : {summary(ours)}")
    base = statistics.median(ours)
    print(
        f"  Parseq vs Scrapyd default: {statistics.median(default) / base:.0f}x faster "
        f"(target >= 50x); vs 0.2 s poll: {statistics.median(fast) / base:.0f}x"
    )


if __name__ == "__main__":
    main()
