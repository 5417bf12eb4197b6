"""The app factory every Parseq process (web, worker, scheduler, all-in-one) builds on."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import Flask

from parseq.config import Config
from parseq.models import db
from parseq.storage import Storage, get_storage

if TYPE_CHECKING:
    from dramatiq import Actor, Broker


@dataclass
class ParseqState:
    """What the app carries for Parseq: ``app.extensions["parseq"]``."""

    config: Config
    storage: Storage
    broker: Broker
    actor: Actor


def create_app(config: Config | None = None) -> Flask:
    """Build the Flask app: database, storage, broker, REST API and admin."""
    from parseq import admin, api, tokens, workers  # noqa: F401 (tokens, workers: their tables)
    from parseq.tasks import init_broker

    config = config or Config.from_env()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for path in (config.var_dir, config.runs_dir, config.state_dir):
        path.mkdir(parents=True, exist_ok=True)

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key or _local_secret_key(config.var_dir),
        SQLALCHEMY_DATABASE_URI=config.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(config.database_url),
    )
    app.json.sort_keys = False  # keep args in the order the user gave them (argv order)
    app.config.update(config.flask)
    db.init_app(app)
    if config.database_url.startswith("sqlite"):
        with app.app_context():
            sa.event.listen(db.engine, "connect", _sqlite_pragmas)

    broker, actor = init_broker(app, config)
    app.extensions["parseq"] = ParseqState(config, get_storage(config), broker, actor)
    api.init_app(app)
    admin.init_app(app)
    return app


def init_db(app: Flask) -> None:
    """Create the tables that do not exist yet."""
    with app.app_context():
        db.create_all()


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Worker threads and the web server share the file; wait for locks instead of failing.
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _local_secret_key(var_dir: Path) -> str:
    """A secret key kept in ``var/`` so sessions survive restarts of the embedded mode."""
    path = var_dir / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()
