"""The ``parseq`` command: the all-in-one server, each service alone, and one-off runs."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from typing import Any

import click

from parseq.cli.common import OneLineErrorsGroup, app_with_db, build_app, one_line_errors
from parseq.cli.envs import envs
from parseq.core.config import Config
from parseq.core.errors import ConfigError, ParseqError, SecretsKeyError
from parseq.db import migrate
from parseq.db.crypto import rotate_secrets
from parseq.db.models import Run, db
from parseq.queue.broker import warn_if_runs_outlast_consumer_timeout
from parseq.sandbox.limits import shared_user_problem
from parseq.scheduler.service import SchedulerService, sweep_pending
from parseq.services.code_store import sync as sync_shipped
from parseq.services.reaper import reap_once
from parseq.services.runs import create_run, get_parser
from parseq.services.tokens import create_token, revoke_token
from parseq.web.admin.auth import create_user, ensure_admin, set_password
from parseq.worker.actors import start_worker
from parseq.worker.execution import run_now

log = logging.getLogger("parseq.cli")


def _check_parser_user(config: Config, refuse: bool) -> None:
    """Refuse (``refuse``, unless PARSEQ_ALLOW_SHARED_USER), else warn, when parsers would run
    as this process's own user."""

    problem = shared_user_problem(config)
    if problem is None:
        return
    if refuse and not config.allow_shared_user:
        raise ConfigError(problem)
    log.warning("PARSERS ARE NOT SANDBOXED FROM PARSEQ: %s", problem)


def _stop_on_signals() -> threading.Event:
    """An event that SIGINT or SIGTERM sets. Install it before starting the threads it stops
    and before saying the service is up: a signal that came between the two would raise
    KeyboardInterrupt past the shutdown and leave those threads (and the process) running."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@click.group(cls=OneLineErrorsGroup)
@click.version_option(package_name="parseq")
@click.option("-v", "--verbose", is_flag=True, help="Also log the schema migrations' details.")
def main(verbose: bool) -> None:
    """Parseq: run and schedule web parsers written in Python."""


main.add_command(envs)


@main.command("init-db")
@one_line_errors
def init_db_cmd() -> None:
    """Create the database tables (or migrate them to this release), register the parsers
    shipped in parsers/ and, when there are no users yet, the admin user (PARSEQ_ADMIN_PASSWORD,
    or a random password printed once)."""

    app = app_with_db()
    with app.app_context():
        config = app.extensions["parseq"].config
        added = sync_shipped(config, app.extensions["parseq"].storage)
        password = ensure_admin(config.admin_password)
    click.echo(f"database ready; {len(added)} parser(s) registered")
    _echo_admin_password(password)


def _echo_admin_password(password: str | None) -> None:
    """Print the generated password of the first ``admin`` user: this once, never again."""
    if password:
        click.echo(
            f"  admin login: user 'admin', password {password}\n"
            "  (shown only this once; change it with: parseq create-user admin --reset)"
        )


@main.group("db")
def db_group() -> None:
    """Database schema migrations (Alembic; every start also migrates, as init-db does)."""


@db_group.command("upgrade")
@click.argument("revision", default="heads")
@one_line_errors
def db_upgrade(revision: str) -> None:
    """Migrate the database schema up to REVISION (default: this release's newest)."""

    app = build_app()
    migrate.upgrade(app, revision)
    click.echo(f"database schema at {_revisions(migrate.current(app))}")


@db_group.command("current")
@one_line_errors
def db_current() -> None:
    """Print the revision the database schema is at, and whether it is this release's newest."""

    at, heads = migrate.current(build_app()), migrate.heads()
    if set(at) == set(heads):
        click.echo(f"{_revisions(at)} (head)")
    else:
        click.echo(f"{_revisions(at)} (head is {_revisions(heads)}: run 'parseq db upgrade')")


@db_group.command("revision")
@click.option("-m", "--message", required=True, help="What the migration changes.")
@one_line_errors
def db_revision(message: str) -> None:
    """For developers: write a migration from what the models have and the database (at head)
    lacks, into parseq/db/migrations/versions/. Review it before committing."""

    path = migrate.revision(build_app(), message)
    click.echo(f"wrote {path}")


def _revisions(revs: tuple[str, ...]) -> str:
    return ", ".join(revs) or "none"


@main.command("rotate-secrets")
@one_line_errors
def rotate_secrets_cmd() -> None:
    """Re-encrypt every parser's secrets with PARSEQ_SECRETS_KEY (old keys in
    PARSEQ_SECRETS_OLD_KEYS); after it, the old keys can be dropped."""

    app = build_app()
    with app.app_context():
        done, failed = rotate_secrets(db.session, app.extensions["parseq"].cipher)
    click.echo(f"secrets of {done} parser(s) re-encrypted with the current key")
    if failed:
        raise SecretsKeyError(
            f"no configured key decrypts the secrets of: {', '.join(failed)} (left unchanged; "
            "add the key they were written with to PARSEQ_SECRETS_OLD_KEYS and run again)"
        )


@main.command()
@click.option("--host", default=None, help="Bind address (PARSEQ_HOST).")
@click.option("--port", type=int, default=None, help="Port (PARSEQ_PORT).")
@click.option("--threads", type=int, default=None, help="Worker threads (PARSEQ_WORKER_THREADS).")
@one_line_errors
def up(host: str | None, port: int | None, threads: int | None) -> None:
    """All in one process: database, worker threads and the web admin (embedded default)."""

    app = app_with_db(host=host, port=port, worker_threads=threads)
    config = app.extensions["parseq"].config
    _check_parser_user(config, refuse=False)  # the embedded mode, on a desktop as yourself
    # The in-memory queue starts empty: every run still pending from before must be re-sent.
    sweep_pending(app, older_than_s=0, resend_all=True)
    with app.app_context():
        sync_shipped(config, app.extensions["parseq"].storage)
        if db.session.execute(db.select(Run.id).limit(1)).first() is None:
            # A first run, so a new install shows a completed run out of the box.
            with contextlib.suppress(ParseqError):
                create_run(get_parser("pi"), {"digits": 50})
        admin_password = ensure_admin(config.admin_password)
    server = _make_server(config.host, config.port, app)
    stop = _stop_on_signals()
    worker = start_worker(app)
    scheduler = SchedulerService(app)
    scheduler.add_maintenance("reaper", reap_once, config.reaper_interval_s)
    scheduler.start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{config.host}:{server.server_port}"
        click.echo(f"Parseq is up: admin {url}/admin/  API {url}/api/v1/parsers  (Ctrl+C stops)")
        click.echo(f"  database {config.database_url}\n  storage  {config.storage_url}")
        _echo_admin_password(admin_password)
        stop.wait()
    finally:
        click.echo("stopping...")
        server.shutdown()
        scheduler.stop()
        worker.stop()


@main.command("create-user")
@click.argument("username")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The password (asked for when not given).",
)
@click.option("--reset", is_flag=True, help="Set a new password for an existing user.")
@one_line_errors
def create_user_cmd(username: str, password: str, reset: bool) -> None:
    """Create an admin panel user USERNAME (or reset its password with --reset)."""

    app = app_with_db()
    with app.app_context():
        if reset:
            set_password(username, password)
            click.echo(f"password of user {username!r} changed")
        else:
            create_user(username, password)
            click.echo(f"user {username!r} created")


def _make_server(host: str, port: int, app: Any) -> Any:
    from werkzeug.serving import make_server

    try:
        return make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise ParseqError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


@main.command()
@click.option("--host", default=None, help="Bind address (PARSEQ_HOST).")
@click.option("--port", type=int, default=None, help="Port (PARSEQ_PORT).")
@one_line_errors
def web(host: str | None, port: int | None) -> None:
    """The web admin and REST API only (for production use gunicorn 'parseq.web.wsgi:app')."""
    app = build_app(host=host, port=port)
    config = app.extensions["parseq"].config
    server = _make_server(config.host, config.port, app)
    stop = _stop_on_signals()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        click.echo(f"Parseq web on http://{config.host}:{server.server_port}/admin/")
        stop.wait()
    finally:
        server.shutdown()


@main.command()
@one_line_errors
def scheduler() -> None:
    """The scheduler: creates and enqueues runs when schedules are due. Start a second one on
    PostgreSQL as a standby; it takes over within PARSEQ_SCHEDULER_SYNC_INTERVAL_S."""

    app = build_app()
    service = SchedulerService(app)
    # Maintenance runs on the active scheduler only: one reaper however many standbys.
    service.add_maintenance("reaper", reap_once, app.extensions["parseq"].config.reaper_interval_s)
    stop = _stop_on_signals()
    service.start()
    try:
        where = app.extensions["parseq"].config.database_url.split("@")[-1]
        click.echo(f"Parseq scheduler on {where}")
        stop.wait()
    finally:
        service.stop()


@main.command()
@click.option("--threads", type=int, default=None, help="Worker threads (PARSEQ_WORKER_THREADS).")
@one_line_errors
def worker(threads: int | None) -> None:
    """A worker: executes runs from the broker's queue until stopped."""

    app = build_app(worker_threads=threads)
    _check_parser_user(app.extensions["parseq"].config, refuse=True)
    warn_if_runs_outlast_consumer_timeout(app.extensions["parseq"].config)
    stop = _stop_on_signals()
    w = start_worker(app)
    try:
        click.echo(f"Parseq worker on {app.extensions['parseq'].config.broker_url} (Ctrl+C stops)")
        stop.wait()
    finally:
        w.stop()


@main.command("create-token")
@click.argument("name")
@click.option("--read-only", is_flag=True, help="The token may only read (GET) the API.")
@one_line_errors
def create_token_cmd(name: str, read_only: bool) -> None:
    """Create an API token called NAME and print it (it is shown only this once)."""

    app = app_with_db()
    with app.app_context():
        _token, plain = create_token(name, read_only=read_only)
    click.echo(plain)
    kind = "read-only " if read_only else ""
    click.echo(f"{kind}token {name!r} created; it is not shown again", err=True)


@main.command("revoke-token")
@click.argument("name")
@one_line_errors
def revoke_token_cmd(name: str) -> None:
    """Revoke the API token called NAME: requests with it get 401 from now on."""

    app = app_with_db()
    with app.app_context():
        revoke_token(name)
    click.echo(f"token {name!r} revoked")


def _parse_arg(_ctx: Any, _param: Any, values: tuple[str, ...]) -> dict[str, Any]:
    """``k=v`` pairs; a value that is valid JSON (numbers, true, lists) is taken as JSON."""
    args: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not of the form key=value")
        try:
            args[key] = json.loads(raw)
        except ValueError:
            args[key] = raw
    return args


@main.command("run")
@click.argument("parser")
@click.option("--arg", "args", multiple=True, callback=_parse_arg, help="key=value (repeatable)")
@click.option(
    "--positional",
    "positional",
    multiple=True,
    help="a positional argument, as given (repeatable; none: the parser's defaults)",
)
@one_line_errors
def run_cmd(parser: str, args: dict[str, Any], positional: tuple[str, ...]) -> None:
    """Run PARSER now in this process and print its status and where its files went."""

    app = app_with_db()
    _check_parser_user(app.extensions["parseq"].config, refuse=False)
    with app.app_context():
        sync_shipped(app.extensions["parseq"].config, app.extensions["parseq"].storage)
        run = run_now(get_parser(parser), args, list(positional) if positional else None)
        storage_url = app.extensions["parseq"].config.storage_url
        click.echo(f"run {run.id} of {parser}: {run.status.value}")
        for f in run.files:
            where = f"{storage_url}/{f.storage_key}" if f.size else "empty, no object stored"
            click.echo(f"  {f.name} ({f.size} bytes) -> {where}")
        for warning in run.warnings or []:
            click.echo(f"warning: {warning}", err=True)
        if run.error:
            click.echo(f"error: {run.error}", err=True)
        elif run.progress_message and run.status.value == "running":
            click.echo(run.progress_message, err=True)  # e.g. its files wait for storage
        if run.status.value != "completed":
            sys.exit(1)


if __name__ == "__main__":
    main()
