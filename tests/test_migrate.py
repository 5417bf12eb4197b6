"""Schema migrations on real PostgreSQL and SQLite: the migrations make exactly the models'
schema, init_db creates, adopts and upgrades databases, and the ``parseq db`` commands."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from flask import Flask

from parseq.cli.main import main
from parseq.core.config import Config
from parseq.core.errors import MigrationError
from parseq.db import locks, migrate
from parseq.db.models import Parser, Run, db
from parseq.web.app import create_app, init_db
from tests.conftest import PG_ADMIN_DSN, add_parser, sql_sent

pytestmark = pytest.mark.services

DIALECTS = ["sqlite", "postgresql"]


@pytest.fixture
def new_database(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Make empty databases: ``new_database("postgresql")`` (dropped after) or ``"sqlite"``."""
    made: list[str] = []

    def make(dialect: str) -> str:
        if dialect == "sqlite":
            return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        name = f"parseq_migrate_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    yield make
    for name in made:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(sql: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    conn.cursor().execute(sql)
    conn.close()


@pytest.fixture
def make_app(make_config: Callable[..., Config]) -> Iterator[Callable[[str], Flask]]:
    """Apps on given database URLs (their pools closed after the test)."""
    apps: list[Flask] = []

    def make(url: str) -> Flask:
        apps.append(create_app(make_config(database_url=url)))
        return apps[-1]

    yield make
    for app in apps:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def migrations_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of ``parseq/db/migrations`` that Parseq uses instead, so a test can add revisions."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", copy)
    migrate._script.cache_clear()
    yield copy
    migrate._script.cache_clear()


def _differences(app: Flask, metadata: sa.MetaData | None = None) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models."""
    with app.app_context(), db.engine.connect() as conn:
        options = migrate.context_options(conn.dialect.name)
        context = MigrationContext.configure(conn, opts=options)
        return compare_metadata(context, metadata or db.metadata)


def _schema(app: Flask) -> dict[str, Any]:
    """Every table's columns, keys, indexes and constraints as the database reports them."""
    with app.app_context(), db.engine.connect() as conn:
        insp = sa.inspect(conn)
        return {
            table: {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in insp.get_columns(table)
                ],
                "pk": insp.get_pk_constraint(table)["constrained_columns"],
                "fks": sorted(
                    (
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                        fk.get("options", {}).get("ondelete"),
                    )
                    for fk in insp.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in insp.get_indexes(table)
                ),
                "uniques": sorted(
                    (u["name"], tuple(u["column_names"]))
                    for u in insp.get_unique_constraints(table)
                ),
                "checks": sorted(c["sqltext"] for c in insp.get_check_constraints(table)),
            }
            for table in sorted(insp.get_table_names())
            if table != migrate.VERSION_TABLE
        }


def _old_build_create_all(app: Flask) -> None:
    """What ``init_db`` did before migrations: ``create_all()`` of the models of then (the
    baseline, which later migrations extend), no version table."""
    migrate.upgrade(app, migrate.BASELINE)
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {migrate.VERSION_TABLE}"))


def _add_baseline_rows(app: Flask) -> None:
    """A parser and a run, written as the baseline schema has them (the models of now have
    columns it lacks)."""
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with app.app_context(), db.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            when = when.replace(tzinfo=None)
        conn.execute(
            sa.text(
                "INSERT INTO parsers (name, description, kind, path, requirements, default_args,"
                " secrets, max_retries, retry_on_timeout, enabled, timezone, overlap, created_at,"
                " updated_at) VALUES ('old', '', 'script', 'old.py', '', '{}', '{}', 0, :no,"
                " :yes, 'UTC', 'skip', :when, :when)"
            ),
            {"no": False, "yes": True, "when": when},
        )
        conn.execute(
            sa.text(
                "INSERT INTO runs (parser_id, status, trigger, args, attempt, queued_at)"
                " SELECT id, 'pending', 'manual', '{}', 1, :when FROM parsers"
            ),
            {"when": when},
        )


# --- the migrations make the models' schema ------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_migrations_on_an_empty_database_match_the_models(
    dialect: str, new_database: Callable[[str], str], make_app: Callable[[str], Flask]
) -> None:
    app = make_app(new_database(dialect))
    migrate.upgrade(app)
    assert migrate.current(app) == migrate.heads()
    assert _differences(app) == []
    assert set(_schema(app)) == set(db.metadata.tables)
    assert {"parsers", "runs", "run_files", "api_tokens", "workers"} <= set(db.metadata.tables)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_comparison_finds_a_column_without_a_migration(
    dialect: str, new_database: Callable[[str], str], make_app: Callable[[str], Flask]
) -> None:
    """The check above can fail: a model column no migration adds is a difference."""
    app = make_app(new_database(dialect))
    migrate.upgrade(app)
    models = sa.MetaData()
    for table in db.metadata.tables.values():
        table.to_metadata(models)
    models.tables["runs"].append_column(sa.Column("priority", sa.Integer, nullable=True))
    models.tables["parsers"].c.cron.type = sa.String(200)
    found = _differences(app, models)
    added = [(d[2], d[3].name) for d in found if isinstance(d, tuple) and d[0] == "add_column"]
    retyped = [(d[0][2], d[0][3]) for d in found if isinstance(d, list)]
    assert added == [("runs", "priority")]
    assert retyped == [("parsers", "cron")]
    assert len(found) == 2


@pytest.mark.parametrize("dialect", DIALECTS)
def test_init_db_on_an_empty_database_makes_the_same_schema_and_records_head(
    dialect: str, new_database: Callable[[str], str], make_app: Callable[[str], Flask]
) -> None:
    migrated, created = make_app(new_database(dialect)), make_app(new_database(dialect))
    migrate.upgrade(migrated)
    init_db(created)
    assert migrate.current(created) == migrate.heads() and len(migrate.heads()) == 1
    assert _differences(created) == []
    assert _schema(created) == _schema(migrated)


# --- databases from earlier builds ---------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("entry", ["init_db", "upgrade"])
def test_a_database_made_by_create_all_is_stamped_and_keeps_its_data(
    dialect: str, entry: str, new_database: Callable[[str], str], make_app: Callable[[str], Flask]
) -> None:
    app = make_app(new_database(dialect))
    _old_build_create_all(app)
    _add_baseline_rows(app)
    assert migrate.current(app) == ()

    if entry == "init_db":
        init_db(app)
    else:
        migrate.upgrade(app)

    assert migrate.current(app) == migrate.heads()
    assert _differences(app) == []
    with app.app_context():
        assert [p.name for p in db.session.scalars(sa.select(Parser))] == ["old"]
        assert db.session.scalar(sa.select(sa.func.count(Run.id))) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_create_all_database_is_upgraded_past_the_baseline_and_keeps_its_data(
    dialect: str,
    new_database: Callable[[str], str],
    make_app: Callable[[str], Flask],
    migrations_copy: Path,
) -> None:
    """A later migration that rebuilds ``parsers`` (SQLite's batch mode copies the table) keeps
    its rows and the runs that reference them (no ON DELETE CASCADE on the way)."""
    [head] = migrate.heads()
    (migrations_copy / "versions" / "0900_parser_note.py").write_text(
        '"""A test revision."""\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        'revision = "0900"\n'
        f'down_revision = "{head}"\n\n\n'
        "def upgrade() -> None:\n"
        '    with op.batch_alter_table("parsers") as batch:\n'
        '        batch.add_column(sa.Column("note", sa.String(50), nullable=True))\n'
        '        batch.alter_column("cron", type_=sa.String(200))\n\n\n'
        "def downgrade() -> None:\n"
        "    pass\n"
    )
    app = make_app(new_database(dialect))
    _old_build_create_all(app)
    _add_baseline_rows(app)
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE parsers SET cron = '0 * * * *'"))

    init_db(app)

    assert migrate.current(app) == ("0900",)
    with app.app_context(), db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, cron, note FROM parsers")).all()
        assert [tuple(r) for r in rows] == [("old", "0 * * * *", None)]
        assert conn.scalar(sa.text("SELECT count(*) FROM runs")) == 1
        cron = next(c for c in sa.inspect(conn).get_columns("parsers") if c["name"] == "cron")
        assert cron["type"].length == 200
        if dialect == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_database_of_an_unknown_newer_revision_is_refused(
    dialect: str, new_database: Callable[[str], str], make_app: Callable[[str], Flask]
) -> None:
    app = make_app(new_database(dialect))
    init_db(app)
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(MigrationError, match="revision 9999, which this Parseq does not know"):
        init_db(app)


# --- idempotence and concurrency -----------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_init_db_twice_changes_nothing(
    dialect: str, new_database: Callable[[str], str], make_app: Callable[[str], Flask]
) -> None:
    app = make_app(new_database(dialect))
    init_db(app)
    with app.app_context():
        add_parser("kept")
    before = _schema(app)
    with app.app_context():
        engine = db.engine
    with sql_sent(engine) as statements:
        init_db(app)
    writes = [
        s for s in statements if s.split()[0].upper() in ("CREATE", "ALTER", "DROP", "INSERT")
    ]
    assert writes == []
    assert statements, "the second init_db did not look at the database at all"
    assert _schema(app) == before
    assert migrate.current(app) == migrate.heads()
    with app.app_context():
        assert db.session.scalar(sa.select(Parser.name)) == "kept"


def test_processes_starting_together_on_postgresql_migrate_once(
    new_database: Callable[[str], str], make_app: Callable[[str], Flask]
) -> None:
    """Web, worker and scheduler call init_db at the same moment: the advisory lock lets one
    create the schema; the others find it at head."""
    url = new_database("postgresql")
    apps = [make_app(url) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(apps))

    def boot(app: Flask) -> None:
        start.wait()
        try:
            init_db(app)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(app,)) for app in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with apps[0].app_context(), db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [
            migrate.heads()
        ]
    assert _differences(apps[0]) == []


def test_init_db_waits_while_another_process_holds_the_lock(
    new_database: Callable[[str], str], make_app: Callable[[str], Flask]
) -> None:
    url = new_database("postgresql")
    app = make_app(url)
    holder = psycopg2.connect(url)
    holder.autocommit = True
    cur = holder.cursor()
    cur.execute("SELECT pg_advisory_lock(%s)", (locks.MIGRATION,))
    thread = threading.Thread(target=init_db, args=(app,))
    thread.start()
    try:
        waiting = 0
        deadline = time.monotonic() + 30  # a safeguard only: it normally waits at once
        while not waiting and thread.is_alive() and time.monotonic() < deadline:
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            (waiting,) = cur.fetchone()
        assert waiting == 1, "init_db did not wait for the advisory lock"
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchone() == (0,)
    finally:
        cur.execute("SELECT pg_advisory_unlock(%s)", (locks.MIGRATION,))
        thread.join()
        holder.close()
    assert migrate.current(app) == migrate.heads()


# --- the commands --------------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cli_env(tmp_path: Path) -> Callable[[str], dict[str, str]]:
    def make(url: str) -> dict[str, str]:
        return {
            "PARSEQ_DATABASE_URL": url,
            "PARSEQ_VAR_DIR": str(tmp_path / "var"),
            "PARSEQ_SECRET_KEY": "test",
            "PARSEQ_LOG_LEVEL": "WARNING",
        }

    return make


@pytest.mark.parametrize("dialect", DIALECTS)
def test_db_upgrade_and_current_commands(
    dialect: str,
    new_database: Callable[[str], str],
    cli_env: Callable[[str], dict[str, str]],
    make_app: Callable[[str], Flask],
) -> None:
    url = new_database(dialect)
    env = cli_env(url)
    head = migrate.heads()[0]
    before = _cli(env, "db", "current")
    assert before.exit_code == 0, before.output
    [head] = migrate.heads()
    assert before.output == f"none (head is {head}: run 'parseq db upgrade')\n"

    up = _cli(env, "db", "upgrade")
    assert up.exit_code == 0, up.output
    assert up.output == f"database schema at {head}\n"
    assert _cli(env, "db", "current").output == f"{head} (head)\n"
    assert _cli(env, "db", "upgrade").exit_code == 0
    assert _differences(make_app(url)) == []

    init = _cli(env, "init-db")
    assert init.exit_code == 0, init.output
    assert "database ready" in init.output


def test_db_command_errors_are_one_line(
    new_database: Callable[[str], str], cli_env: Callable[[str], dict[str, str]]
) -> None:
    env = cli_env(new_database("postgresql"))
    unknown = _cli(env, "db", "upgrade", "nope")
    assert unknown.exit_code == 1
    assert unknown.output.startswith("parseq: error: cannot upgrade the database schema:")
    assert unknown.output.count("\n") == 1

    down = _cli(cli_env("postgresql://postgres@127.0.0.1:1/nothing"), "db", "current")
    assert down.exit_code == 1
    assert down.output.startswith("parseq: error: database: ")
    assert down.output.count("\n") == 1

    no_message = _cli(env, "db", "revision")
    assert no_message.exit_code == 2  # click's usage error


def test_db_revision_writes_the_next_numbered_migration_from_the_models(
    new_database: Callable[[str], str],
    cli_env: Callable[[str], dict[str, str]],
    make_app: Callable[[str], Flask],
    migrations_copy: Path,
) -> None:
    url = new_database("postgresql")
    env = cli_env(url)
    assert _cli(env, "db", "upgrade").exit_code == 0
    # As if the models had gained a column and an index since the last migration.
    with make_app(url).app_context(), db.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE workers DROP COLUMN started_at"))
        conn.execute(sa.text("DROP INDEX ix_runs_queued_at"))

    [head] = migrate.heads()
    following = f"{int(head) + 1:04d}"
    made = _cli(env, "db", "revision", "-m", "worker start time")
    assert made.exit_code == 0, made.output
    path = migrations_copy / "versions" / f"{following}_worker_start_time.py"
    assert made.output.endswith(f"wrote {path}\n")
    text = path.read_text()
    assert f'revision = "{following}"' in text
    assert f'down_revision = "{head}"' in text
    assert "sa.DateTime(timezone=True)" in text  # UTCDateTime, written as what it stores
    assert "import parseq" not in text
    assert "parseq." not in text  # migrations never use app code, which changes after them
    assert "op.create_index" in text

    assert _cli(env, "db", "upgrade").exit_code == 0
    assert _cli(env, "db", "current").output == f"{following} (head)\n"
    assert _differences(make_app(url)) == []
