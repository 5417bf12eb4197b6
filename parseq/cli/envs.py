"""``parseq envs``: list, build and prune the cached per-parser virtualenvs."""

from __future__ import annotations

import time

import click

from parseq.cli.common import app_with_db, one_line_errors
from parseq.core.config import Config
from parseq.core.errors import ParseqError
from parseq.envs import cache as envs_mod
from parseq.sandbox.limits import base_python
from parseq.services import code_store, metrics
from parseq.services.runs import get_parser
from parseq.worker import code as run_code


@click.group()
def envs() -> None:
    """Manage the cached per-parser virtualenvs (PARSEQ_ENVS_DIR)."""


@envs.command("list")
@one_line_errors
def envs_list() -> None:
    """Every cached env, most recently used first."""

    config = _build_config()
    found = envs_mod.list_envs(config)
    for env in found:
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(env.last_used))
        flag = " in-use" if env.in_use else ""
        reqs = " ".join(env.requirements) or "(base: no requirements)"
        click.echo(f"{env.key}  {env.size_bytes / 2**20:8.1f} MiB  used {used}Z{flag}  {reqs}")
    total = sum(e.size_bytes for e in found)
    click.echo(f"{len(found)} env(s), {total / 2**20:.1f} MiB in {config.envs_dir}")


@envs.command("build")
@click.argument("parser")
@one_line_errors
def envs_build(parser: str) -> None:
    """Build (or find) the env of PARSER and print its key and interpreter."""

    app = app_with_db()
    config, storage = app.extensions["parseq"].config, app.extensions["parseq"].storage
    with app.app_context():
        code_store.sync(config, storage)
        found = get_parser(parser)
        # What its next run builds: the current code version's lock, else its file's lines.
        code = run_code.for_run(config, storage, found, code_store.current_version(found))
        wanted = run_code.requirements_for(config, found, code)
    try:
        env = envs_mod.acquire(
            config,
            wanted.lines,
            on_build=metrics.count_env_build,
            python=base_python(config),
        )
    except envs_mod.EnvBuildFailed as exc:
        where = config.envs_dir / ".failed" / f"{exc.key}.log"
        raise ParseqError(f"{exc.message.splitlines()[0]} (build log: {where})") from None
    with env:
        state = "built" if env.built else "cached"
        click.echo(f"{env.key} {state} ({wanted.source}: {' '.join(wanted.lines) or 'none'})")
        click.echo(f"  python {env.python}")


@envs.command("prune")
@click.option("--max-count", type=int, default=None, help="Keep at most N envs.")
@click.option("--max-bytes", type=int, default=None, help="Keep at most N bytes of envs.")
@click.option("--all", "everything", is_flag=True, help="Remove every env not in use.")
@one_line_errors
def envs_prune(max_count: int | None, max_bytes: int | None, everything: bool) -> None:
    """Evict least-recently-used envs past the limits (default: PARSEQ_ENVS_MAX_*)."""

    config = _build_config()
    if everything:
        max_count, max_bytes = 0, None
    elif max_count is None and max_bytes is None:
        max_count, max_bytes = config.envs_max_count or None, config.envs_max_bytes or None
    evicted = envs_mod.prune(config, max_count, max_bytes)
    for key in evicted:
        click.echo(f"removed {key}")
    click.echo(f"{len(evicted)} env(s) removed; {len(envs_mod.list_envs(config))} left")


def _build_config():  # type: ignore[no-untyped-def]

    return Config.from_env()
