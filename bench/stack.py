"""A production-shaped Parseq stack for benchmarks: PostgreSQL + RabbitMQ + an S3 endpoint
(moto's S3 app served over HTTP with keep-alive, in processes of its own like any S3 service:
``bench/moto_app.py``), the web app on a real HTTP port, and ``parseq worker`` processes.

Everything it creates (database, queue, bucket, folders) is its own and removed on exit.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_PARSERS = Path(__file__).resolve().parent / "parsers"
PG_ADMIN_DSN = "dbname=postgres user=postgres host=127.0.0.1 port=5432"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Return once ``proc`` accepts connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.args} did not start listening on {port}") from None
            time.sleep(0.05)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return f"p50 {statistics.median(ms):7.1f} ms   p99 {pct(ms, 99):7.1f} ms   (n={len(ms)})"


def wait_finished(app: Any, run_id: int) -> Any:
    """Poll until the run is final with its ``finished_at``; return (status, finished_at).
    Exits the benchmark with the run's error when it did not complete."""
    from parseq.db.models import Run, RunStatus, db

    with app.app_context():
        while True:
            row = db.session.execute(
                db.select(Run.status, Run.finished_at).where(Run.id == run_id)
            ).one()
            if row.status.is_final and row.finished_at:
                break
            db.session.rollback()
            time.sleep(0.001)
        if row.status is not RunStatus.COMPLETED:
            error = db.session.get(Run, run_id).error
            raise SystemExit(f"benchmark run {run_id} ended {row.status}: {error}")
    return row


class Stack:
    """Context manager: ``with Stack(workers=2, threads=2) as stack: ...``."""

    def __init__(
        self,
        workers: int = 1,
        threads: int = 2,
        parsers_dir: Path = BENCH_PARSERS,
        settings: dict[str, str] | None = None,
    ) -> None:
        """``settings``: more ``PARSEQ_*`` variables for the app and the workers."""
        self.settings = settings or {}
        self.n_workers = workers
        self.threads = threads
        self.parsers_dir = parsers_dir
        self.session = uuid.uuid4().hex[:8]
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Stack:
        import logging

        import boto3
        import psycopg2

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's and our request lines
        self.tmp = Path(tempfile.mkdtemp(prefix="parseq-bench-"))
        self.tmp.chmod(0o755)  # parsers run as an unprivileged user when we are root
        self.db_name = f"parseq_bench_{self.session}"
        conn = psycopg2.connect(PG_ADMIN_DSN)
        conn.autocommit = True
        conn.cursor().execute(f'CREATE DATABASE "{self.db_name}"')
        conn.close()
        s3_port = free_port()
        gunicorn = ["--workers", "1", "--worker-class", "gthread", "--threads", "16"]
        gunicorn += ["--keep-alive", "75", "--bind", f"127.0.0.1:{s3_port}"]
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *gunicorn, "bench.moto_app:app"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        wait_listening(s3_port, self.moto)
        endpoint = f"http://127.0.0.1:{s3_port}"
        bucket = f"bench-{self.session}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        self.queue = f"parseq_bench_{self.session}"
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "PARSEQ_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{self.db_name}",
            "PARSEQ_BROKER_URL": RABBIT_URL,
            "PARSEQ_QUEUE_NAME": self.queue,
            "PARSEQ_STORAGE_URL": f"s3://{bucket}/bench",
            "PARSEQ_S3_ENDPOINT_URL": endpoint,
            "PARSEQ_S3_ACCESS_KEY_ID": "bench",
            "PARSEQ_S3_SECRET_ACCESS_KEY": "bench",
            "PARSEQ_VAR_DIR": str(self.tmp / "var"),
            "PARSEQ_ENVS_DIR": str(self.tmp / "envs"),
            "PARSEQ_PARSERS_DIR": str(self.parsers_dir),
            "PARSEQ_SECRET_KEY": "bench",
            "PARSEQ_LOG_LEVEL": "WARNING",
            **self.settings,
        }
        from parseq.core.config import Config
        from parseq.web.app import create_app, init_db

        self.app = create_app(Config.from_env(environ=self.env))
        init_db(self.app)
        self._start_web()
        for _ in range(self.n_workers):
            self.start_worker()
        return self

    def _start_web(self) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "parseq.cli", "worker", "--threads", str(self.threads)],
            env={**self.env, "PARSEQ_LOG_LEVEL": "INFO"},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + 30
        path = Path(log.name)
        while b"Parseq worker on" not in path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {path.read_text()}")
            time.sleep(0.05)
        self.procs.append(proc)
        return proc

    def auth_headers(self) -> dict[str, str]:
        """Headers that authorize API calls (a token once the API requires one)."""
        try:
            from parseq.services.tokens import create_token  # type: ignore[import-not-found]
        except ImportError:
            return {}
        with self.app.app_context():
            _token, secret = create_token(f"bench-{uuid.uuid4().hex[:6]}")
        return {"Authorization": f"Bearer {secret}"}

    def __exit__(self, *exc: Any) -> None:
        import shutil

        import pika
        import psycopg2

        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.server.shutdown()
        from parseq.db.models import db

        with self.app.app_context():
            db.engine.dispose()
        self.moto.terminate()
        self.moto.wait(timeout=15)
        conn = psycopg2.connect(PG_ADMIN_DSN)
        conn.autocommit = True
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        conn.close()
        rabbit = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
        channel = rabbit.channel()
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(queue=self.queue + suffix)
        rabbit.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
