"""The app factory every Parseq process (web, worker, scheduler, all-in-one) builds on."""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import Flask, Response, jsonify

from parseq.core.config import Config
from parseq.db.crypto import local_key, make_cipher
from parseq.db.migrate import ensure_schema
from parseq.db.models import db
from parseq.db.reconnect import is_disconnect
from parseq.queue.broker import BrokerThread, init_broker
from parseq.sandbox import procs
from parseq.services import metrics
from parseq.storage.base import Storage, get_storage
from parseq.web import api, headers
from parseq.web.admin import admin

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet
    from dramatiq import Broker


@dataclass
class ParseqState:
    """What the app carries for Parseq: ``app.extensions["parseq"]``."""

    config: Config
    storage: Storage
    broker: Broker
    #: Encrypts and decrypts parser secrets (``crypto.EncryptedJSON``).
    cipher: MultiFernet
    #: Where the web, scheduler and worker threads make their broker calls (``send_run``).
    broker_thread: BrokerThread


def create_app(config: Config | None = None) -> Flask:
    """Build the Flask app: database, storage, broker, REST API and admin."""

    config = config or Config.from_env()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # APScheduler logs every job execution (the 2 s sync tick) at INFO: noise, not news.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.root.level))
    # pika logs every failed connect at ERROR, tracebacks included, many per send while the
    # broker is down; the callers raise what matters and Parseq logs an outage once.
    if config.log_level.upper() != "DEBUG":
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    # Alembic logs its set-up at INFO on every start, changed or not; migrate logs what changed.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
    for path in (config.var_dir, config.runs_dir, config.state_dir):
        path.mkdir(parents=True, exist_ok=True)
    # Parsers pass through var/ to their own folders but may not list it (the key files).
    with contextlib.suppress(PermissionError):  # another user's var/: theirs to set
        config.var_dir.chmod(0o711)
    # Keys in this process's environment and memory stay out of a same-user parser's reach.
    procs.make_undumpable()

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key or _local_secret_key(config.var_dir),
        SQLALCHEMY_DATABASE_URI=config.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(config),
        # Never the debugger (it runs code from the browser), whatever FLASK_DEBUG says.
        DEBUG=False,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.secure_cookies,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=config.secure_cookies,
    )
    app.json.sort_keys = False  # keep args in the order the user gave them (argv order)
    app.config.update(config.flask)
    db.init_app(app)
    if config.database_url.startswith("sqlite"):
        with app.app_context():
            sa.event.listen(db.engine, "connect", _sqlite_pragmas)

    app.extensions["parseq"] = ParseqState(
        config, get_storage(config), init_broker(config), make_cipher(config), BrokerThread()
    )
    api.init_app(app)
    app.register_blueprint(metrics.bp)
    admin.init_app(app)
    headers.init_app(app, config)
    app.register_error_handler(sa.exc.DBAPIError, _database_error)
    return app


def _database_error(exc: sa.exc.DBAPIError) -> tuple[Response, int]:
    """A lost database answers 503 (retry later) instead of a bare 500; the next request gets a
    fresh connection (pool pre-ping)."""

    db.session.rollback()
    if is_disconnect(exc):
        logging.getLogger(__name__).warning("database unreachable: %s", exc.orig)
        return _json_error(503, "database_unavailable", "the database is unreachable; retry later")
    logging.getLogger(__name__).error("database error", exc_info=exc)
    return _json_error(500, "internal_error", "internal error")


def _json_error(status: int, code: str, message: str) -> tuple[Response, int]:

    return jsonify({"error": {"code": code, "message": message}}), status


def init_db(app: Flask) -> None:
    """Bring the database to this release's schema: create it, or run the migrations it lacks."""

    ensure_schema(app)


def _engine_options(config: Config) -> dict[str, Any]:
    if config.database_url.startswith("sqlite"):
        # Worker threads and the web server share the file; wait for locks instead of failing.
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {
        "pool_pre_ping": True,
        "pool_size": 10,
        "max_overflow": 20,
        # Names this process in pg_stat_activity, e.g. as the holder of a lock another waits on.
        "connect_args": {"application_name": config.application_name},
    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _local_secret_key(var_dir: Path) -> str:
    """A secret key kept in ``var/`` so sessions survive restarts of the embedded mode."""
    return local_key(var_dir / "secret_key", lambda: secrets.token_hex(32))
