"""Shared fixtures: configs and apps on the embedded default and on real services.

Real services: PostgreSQL (a database made for this session and dropped after), RabbitMQ (queue
names made for this session and deleted after), Redis, and an S3 endpoint (moto's server over
HTTP on a free port). ``scripts/services.sh`` starts the daemons before pytest runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from parseq.core.config import Config, installer_environ
from parseq.core.errors import ParseqError
from parseq.db.models import Parser, Run, RunStatus, db
from parseq.web.app import create_app, init_db

HERE = Path(__file__).resolve().parent
FIXTURE_PARSERS = HERE / "fixtures" / "parsers"
PG_ADMIN_DSN = "dbname=postgres user=postgres host=127.0.0.1 port=5432"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS_URL = "redis://127.0.0.1:6379/15"
SESSION = uuid.uuid4().hex[:10]


# --- temporary folders the sandbox user can reach ------------------------------------------
# Run as root, Parseq runs parsers as an unprivileged user (PARSEQ_RUN_AS_USER), which must
# traverse into var/ and the parser folders. pytest makes its temp folders 0700 and resets
# /tmp/pytest-of-<user> to 0700 whenever any session starts, so this session uses a base of its
# own and opens each tmp_path for traversal (0711: no listing).
BASETEMP = Path(tempfile.gettempdir()) / f"parseq-pytest-{SESSION}"


def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is None:
        config.option.basetemp = str(BASETEMP)


def pytest_unconfigure(config: pytest.Config) -> None:
    if Path(config.option.basetemp or "") == BASETEMP:
        shutil.rmtree(BASETEMP, ignore_errors=True)


def traversable(path: Path) -> Path:
    """Let other users pass through ``path`` and its parents up to pytest's base folder."""
    base = Path(tempfile.gettempdir())
    for p in [path, *path.parents]:
        if p == base or not p.is_relative_to(base):
            break
        p.chmod(p.stat().st_mode | 0o711)
    return path


def _python_for_parsers() -> str:
    """A Python the sandbox user can run: ours, unless it lives under a 0700 home (pyenv in
    /root), then the system's. Fixture parsers need the standard library only."""
    from parseq.sandbox.limits import SandboxUser, check_reachable

    nobody = SandboxUser("nobody", 65534, 65534)
    for candidate in (sys.executable, "/usr/local/bin/python3", "/usr/bin/python3"):
        try:
            check_reachable(nobody, Path(candidate))
            return candidate
        except (OSError, ParseqError):
            continue
    return sys.executable


PARSER_PYTHON = _python_for_parsers()


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's ``tmp_path``, traversable by the sandbox user."""
    return traversable(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- real services -------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A PostgreSQL database named ``name``, created for the block and dropped after it."""
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own."""
    with scratch_database(f"parseq_test_{SESSION}") as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over real HTTP on a free port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


S3_KEYS = {"s3_access_key_id": "parseq-test-key", "s3_secret_access_key": "parseq-test-secret"}


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the S3 endpoint."""
    import boto3

    name = f"parseq-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=S3_KEYS["s3_access_key_id"],
        aws_secret_access_key=S3_KEYS["s3_secret_access_key"],
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    return name


def delete_rabbit_queues(*names: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    channel = conn.channel()
    for name in names:
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(queue=name + suffix)
    conn.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to a target port with threads, to simulate an outage:
    :meth:`close` drops every connection and refuses new ones; :meth:`open` serves again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        #: Client connections dropped by :meth:`close` so far (a test can check it cut some).
        self.cut_connections = 0
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        live = 0
        for conn in conns:
            with contextlib.suppress(OSError):  # raised by sockets that had already ended
                conn.shutdown(socket.SHUT_RDWR)
                live += 1
            conn.close()
        self.cut_connections += live // 2  # each connection is a client and an upstream socket

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Down (as a restarting server: connections dropped, new ones refused), then up."""
        self.close()
        try:
            yield
        finally:
            self.open()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    """Make :class:`TcpProxy` instances (closed after the test): ``tcp_proxy(5672)``."""
    made: list[TcpProxy] = []

    def make(target_port: int) -> TcpProxy:
        made.append(TcpProxy(target_port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


# --- configs and apps ----------------------------------------------------------------------


#: What the env builder needs from ours (proxies, TLS certificates, uv's cache under HOME).
INSTALLER_ENV = installer_environ(os.environ)


@pytest.fixture(scope="session")
def shared_envs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parser virtualenvs shared by the session's tests, so the base env is built once;
    tests about envs themselves pass an ``envs_dir`` of their own."""
    return traversable(tmp_path_factory.mktemp("envs"))


@pytest.fixture
def make_config(tmp_path: Path, shared_envs_dir: Path) -> Callable[..., Config]:
    """A config under ``tmp_path`` with the fixture parsers; keyword args override."""

    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "var_dir": tmp_path / "var",
            "parsers_dir": FIXTURE_PARSERS,
            "notebooks_dir": tmp_path / "notebooks",
            "envs_dir": shared_envs_dir,
            "secret_key": "test",
            "default_timeout_s": 60.0,
            "kill_grace_s": 0.5,
            "log_level": "WARNING",
            "python": PARSER_PYTHON,
        }
        values.update(overrides)
        return Config.from_env(environ=INSTALLER_ENV, **values)

    return make


@pytest.fixture
def env_config(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    """A config with an envs dir of this test's own, so build counts are this test's."""
    return make_config(envs_dir=tmp_path / "envs", parsers_dir=tmp_path / "parsers")


def add_parser(name: str, path: str | None = None, **fields: Any) -> Parser:
    parser = Parser(name=name, path=path or f"{name}.py", **fields)
    db.session.add(parser)
    db.session.commit()
    return parser


@contextlib.contextmanager
def sql_sent(engine: Any) -> Iterator[list[str]]:
    """The SQL statements ``engine`` sends to the database inside the block, in order."""
    import sqlalchemy as sa

    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def api_client(app: Flask, *, read_only: bool = False, auth: bool = True) -> FlaskClient:
    """A test client allowed to call the REST API (the one place API auth is set up): it sends
    a fresh token of its own (``read_only``), or none at all with ``auth=False``."""
    from parseq.services.tokens import create_token

    client = app.test_client()
    if auth:
        with app.app_context():
            _token, plain = create_token(f"test-{uuid.uuid4().hex[:12]}", read_only=read_only)
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {plain}"
    return client


ADMIN_USER = "test-admin"
ADMIN_PASSWORD = "test-admin-password"
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_from(html: str | bytes) -> str:
    """The CSRF token of the first form on a page."""
    text = html.decode() if isinstance(html, bytes) else html
    match = CSRF_RE.search(text)
    assert match, "page has no CSRF token"
    return match.group(1)


class WebClient(FlaskClient):
    """A test client that runs each request in an app context of its own, as a server does.

    The app fixtures keep an app context pushed, and Flask reuses it for test requests, so
    ``g`` (where Flask-Login and Flask-WTF cache the user and the CSRF token) would leak from
    one request, and one client, to the next.
    """

    def open(self, *args: Any, **kwargs: Any) -> Any:
        with self.application.app_context():
            return super().open(*args, **kwargs)


def web_client(app: Flask) -> FlaskClient:
    """A browser-like client for HTML pages, not logged in."""
    return WebClient(app, app.response_class, use_cookies=True)


def admin_client(app: Flask) -> FlaskClient:
    """A test client logged in to the admin (the one place admin login is set up).

    ``client.csrf_token`` holds a CSRF token valid for its session: admin POSTs send it as the
    ``csrf_token`` form field.
    """
    from parseq.core.errors import Conflict
    from parseq.web.admin.auth import create_user

    with app.app_context(), contextlib.suppress(Conflict):
        create_user(ADMIN_USER, ADMIN_PASSWORD)
    client = web_client(app)
    token = csrf_from(client.get("/admin/login/").data)
    resp = client.post(
        "/admin/login/",
        data={"username": ADMIN_USER, "password": ADMIN_PASSWORD, "csrf_token": token},
    )
    assert resp.status_code == 302, resp.data
    # A login starts a new session, with a CSRF token of its own.
    client.csrf_token = csrf_from(client.get("/admin/").data)  # type: ignore[attr-defined]
    return client


def wait_for_status(run_id: int, status: RunStatus, timeout_s: float = 15.0) -> Run:
    """Poll the database until the run has ``status`` (or the time is up: the caller asserts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        db.session.expire_all()
        run = db.session.get(Run, run_id)
        if run.status is status or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def wait_for_run(run_id: int, timeout_s: float = 30.0) -> Run:
    """Poll the database until the run is final (workers commit in other sessions)."""
    deadline = time.monotonic() + timeout_s
    while True:
        db.session.expire_all()
        run = db.session.get(Run, run_id)
        assert run is not None
        if run.status.is_final or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


@contextlib.contextmanager
def running(config: Config, sync_shipped: bool = False) -> Iterator[Flask]:
    """An app on ``config`` with its tables, 2 in-process worker threads and an app context."""
    from parseq.services.code_store import sync
    from parseq.worker.actors import start_worker

    app = create_app(config)
    init_db(app)
    if sync_shipped:
        with app.app_context():
            sync(config, app.extensions["parseq"].storage)
    worker = start_worker(app, threads=2)
    with app.app_context():
        yield app
    worker.stop()
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def embedded_app(make_config: Callable[..., Config]) -> Iterator[Flask]:
    """The embedded default: SQLite, local storage, in-memory broker, in-process worker."""
    with running(make_config()) as app:
        yield app


@pytest.fixture
def sqlite_app(make_config: Callable[..., Config]) -> Iterator[Flask]:
    """SQLite and local storage with no worker: runs are executed by calling the code."""
    app = create_app(make_config())
    init_db(app)
    with app.app_context():
        yield app
        db.engine.dispose()


@pytest.fixture(scope="session")
def services_env(
    pg_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """``PARSEQ_*`` variables for PostgreSQL + RabbitMQ + S3, shared by the web app under test
    and a real ``parseq worker`` process."""
    import boto3

    bucket = f"parseq-{SESSION}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=S3_KEYS["s3_access_key_id"],
        aws_secret_access_key=S3_KEYS["s3_secret_access_key"],
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    queue = f"parseq_test_{SESSION}"
    env = {
        **INSTALLER_ENV,
        "PARSEQ_DATABASE_URL": pg_url,
        "PARSEQ_BROKER_URL": RABBIT_URL,
        "PARSEQ_QUEUE_NAME": queue,
        "PARSEQ_STORAGE_URL": f"s3://{bucket}/results",
        "PARSEQ_S3_ENDPOINT_URL": s3_endpoint,
        "PARSEQ_S3_ACCESS_KEY_ID": S3_KEYS["s3_access_key_id"],
        "PARSEQ_S3_SECRET_ACCESS_KEY": S3_KEYS["s3_secret_access_key"],
        "PARSEQ_VAR_DIR": str(traversable(tmp_path_factory.mktemp("services-var"))),
        "PARSEQ_PARSERS_DIR": str(FIXTURE_PARSERS),
        "PARSEQ_ENVS_DIR": str(traversable(tmp_path_factory.mktemp("services-envs"))),
        "PARSEQ_SECRET_KEY": "test",
        "PARSEQ_KILL_GRACE_S": "0.5",
        "PARSEQ_LOG_LEVEL": "INFO",
        "PARSEQ_PYTHON": PARSER_PYTHON,
    }
    yield env
    delete_rabbit_queues(queue, f"{queue}-notify")


@pytest.fixture(scope="session")
def services_app(services_env: dict[str, str]) -> Iterator[Flask]:
    """The web side on PostgreSQL + RabbitMQ + S3, with the tables created."""
    app = create_app(Config.from_env(environ=services_env))
    init_db(app)
    yield app
    with app.app_context():
        db.engine.dispose()


def start_worker_process(
    env: dict[str, str], log_path: Path, threads: int = 2
) -> subprocess.Popen[bytes]:
    """Start a real ``parseq worker`` process with ``env``; return once it consumes."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parseq.cli", "worker", "--threads", str(threads)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while b"Parseq worker on" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"worker did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def worker_process(
    services_app: Flask, services_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``parseq worker`` process consuming the session's RabbitMQ queue."""
    proc = start_worker_process(services_env, tmp_path_factory.mktemp("worker") / "worker.log")
    yield proc
    stop_process(proc)


@pytest.fixture
def site() -> Iterator[Any]:
    """A local HTTP server with sample pages of the demo parsers' sites (tests/fixture_site.py)."""
    from tests.fixture_site import Site

    server = Site().start()
    yield server
    server.stop()
