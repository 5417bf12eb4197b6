"""PostgreSQL advisory locks, with real processes: a running scheduler never blocks a one-off
command, a schema at head takes no migration lock, and a blocked one gives up naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from parseq.db import locks
from tests.conftest import PARSER_PYTHON, PG_ADMIN_DSN, stop_process

pytestmark = pytest.mark.services


def _admin(sql: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    conn.cursor().execute(sql)
    conn.close()


@pytest.fixture
def pg_db() -> Iterator[str]:
    """An empty PostgreSQL database of this test's own (no schema yet)."""
    name = f"parseq_locks_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "PARSEQ_DATABASE_URL": url,
        "PARSEQ_VAR_DIR": str(tmp_path / "var"),
        "PARSEQ_ENVS_DIR": str(tmp_path / "envs"),
        "PARSEQ_SECRET_KEY": "test",
        "PARSEQ_LOG_LEVEL": "WARNING",
        "PARSEQ_PYTHON": PARSER_PYTHON,
        **extra,
    }


def _parseq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command; a hang (the bug) fails the test at the timeout instead of blocking it."""
    return subprocess.run(
        [sys.executable, "-m", "parseq.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lock_holders(url: str, key: int) -> list[str]:
    """The application names of the sessions holding advisory lock ``key``."""
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s",
            (key >> 32, key & 0xFFFFFFFF),
        )
        return [name for (name,) in cur.fetchall()]
    finally:
        conn.close()


def _hold(url: str, key: int, application_name: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(url, application_name=application_name)
    conn.autocommit = True
    conn.cursor().execute("SELECT pg_advisory_lock(%s)", (key,))
    return conn


def test_the_lock_keys_are_distinct_and_in_parseqs_namespace() -> None:
    keys = [locks.MIGRATION, locks.SCHEDULER_LEADER]
    assert len(set(keys)) == len(keys)
    assert all(key >> 8 == locks.NAMESPACE >> 8 and key < 2**63 for key in keys)
    assert 0x706172736571 not in keys  # the one key both used before: never again


def test_one_off_commands_complete_while_a_scheduler_runs(tmp_path: Path, pg_db: str) -> None:
    """The scheduler holds its leader lock for its whole life: every command that migrates
    first used to wait on the same key forever."""
    env = _env(tmp_path, pg_db)
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "parseq.cli", "scheduler"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not _lock_holders(pg_db, locks.SCHEDULER_LEADER):
            assert scheduler.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the scheduler never became active"
            time.sleep(0.1)
        assert _lock_holders(pg_db, locks.SCHEDULER_LEADER) == ["parseq scheduler"]

        # The database is empty: db upgrade must take the migration lock itself.
        commands = [
            ("db", "upgrade"),
            ("init-db",),
            ("create-user", "alice", "--password", "long-enough-pw"),
            ("create-token", "leaked"),
            ("revoke-token", "leaked"),
            ("run", "pi", "--arg", "digits=5"),
            ("db", "current"),
        ]
        for args in commands:
            done = _parseq(env, *args)
            assert done.returncode == 0, (args, done.stderr)
        assert done.stdout.endswith("(head)\n")
        assert scheduler.poll() is None
    finally:
        stop_process(scheduler)


def test_a_schema_at_head_takes_no_migration_lock(tmp_path: Path, pg_db: str) -> None:
    env = _env(tmp_path, pg_db)
    assert _parseq(env, "init-db").returncode == 0
    holder = _hold(pg_db, locks.MIGRATION, "stuck migration")
    try:
        made = _parseq(env, "create-token", "ci")
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith("pq_")
    finally:
        holder.close()


def test_a_blocked_migration_gives_up_naming_the_holder(tmp_path: Path, pg_db: str) -> None:
    env = _env(tmp_path, pg_db, PARSEQ_MIGRATION_LOCK_TIMEOUT_S="1")
    holder = _hold(pg_db, locks.MIGRATION, "stuck migration")
    try:
        pid = holder.get_backend_pid()
        started = time.monotonic()
        for args in (("init-db",), ("db", "upgrade"), ("create-token", "x")):
            failed = _parseq(env, *args)
            assert failed.returncode == 1, (args, failed.stderr)
            assert failed.stderr == (
                "parseq: error: waited 1s for the schema migration lock, held by "
                f"pid {pid} 'stuck migration' from 127.0.0.1; stop that process or raise "
                "PARSEQ_MIGRATION_LOCK_TIMEOUT_S\n"
            )
        assert time.monotonic() - started < 45
    finally:
        holder.close()
    assert _parseq(env, "init-db").returncode == 0  # the holder gone, it goes through


def test_a_bad_lock_timeout_is_a_one_line_error(tmp_path: Path, pg_db: str) -> None:
    failed = _parseq(_env(tmp_path, pg_db, PARSEQ_MIGRATION_LOCK_TIMEOUT_S="0"), "init-db")
    assert failed.returncode == 1
    assert failed.stderr == "parseq: error: PARSEQ_MIGRATION_LOCK_TIMEOUT_S must be > 0\n"
