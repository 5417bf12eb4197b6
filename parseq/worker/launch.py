"""Everything a run's process needs before it starts: its folders, the user it runs as, its
command, environment and limits. Prepared from the run and the parser, in the worker, so that
the sandbox gets plain values only (:mod:`parseq.sandbox`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from parseq.core.argv import build_command
from parseq.core.config import Config
from parseq.db.models import Parser, ParserKind, Run
from parseq.db.runs import LOG_FILE
from parseq.notebooks import validate as notebooks
from parseq.sandbox import limits as sandbox
from parseq.sandbox import runner
from parseq.sandbox.limits import Limits, SandboxUser
from parseq.worker import sdk

log = logging.getLogger(__name__)

#: The folders of a run's working folder that belong to the parser's process.
RUN_DIRS = ("output", "home", "tmp", "progress")


@dataclasses.dataclass
class Launch:
    """A run's process, ready to start."""

    #: The parser's own folders by name (``RUN_DIRS``); the output folder is its cwd.
    dirs: dict[str, Path]
    state_dir: Path
    progress_file: Path
    log_path: Path
    secrets: dict[str, str]
    user: SandboxUser | None
    argv: list[str]
    env: dict[str, str]
    limits: Limits
    timeout_s: float


def prepare(
    run: Run, config: Config, workdir: Path, script: Path, find_interpreter: Callable[[], Path]
) -> Launch:
    """Make the run's folders and say how its process starts (nothing starts yet). The
    interpreter (its env built if need be) is found once the parser's secrets have decrypted."""
    parser = run.parser
    # Each folder the parser writes is its own; the run log stays in ``workdir``, the worker's.
    # The output folder is also its working directory: what it writes where it runs is kept.
    dirs = {name: workdir / name for name in RUN_DIRS}
    state_dir = state_dir_for(config, parser)
    for path in [*dirs.values(), state_dir]:
        path.mkdir(parents=True, exist_ok=True)
    progress_file = dirs["progress"] / sdk.PROGRESS_FILE
    secrets = dict(parser.secrets or {})  # raises SecretsKeyError when the key is wrong
    interpreter = find_interpreter()
    sdk_path = sdk.install_sdk(config.sdk_dir)
    user = sandbox.sandbox_user(config, parser_id=parser.id)
    if user is not None:
        sandbox.check_reachable(user, interpreter)
        sandbox.check_reachable(user, script, need=0o4)
        sandbox.harden_var(config, config.database_url)
        sandbox.share_sdk(config.sdk_dir, sdk_path)
        workdir.chmod(0o711)
    env = runner.build_env(
        base_env=config.child_env,
        run_id=run.id,
        parser=parser.name,
        args=run.args or {},
        positional=run.positional or [],
        secrets=secrets,
        output_dir=dirs["output"],
        state_dir=state_dir,
        home_dir=dirs["home"],
        tmp_dir=dirs["tmp"],
        extra={
            "PYTHONPATH": str(sdk_path),
            "PARSEQ_PROGRESS_FILE": str(progress_file),
            # Who ``getpass.getuser()`` says it is: a uid of its own has no passwd entry.
            **({"USER": user.name, "LOGNAME": user.name} if user is not None else {}),
        },
    )
    return Launch(
        dirs=dirs,
        state_dir=state_dir,
        progress_file=progress_file,
        log_path=workdir / LOG_FILE,
        secrets=secrets,
        user=user,
        argv=command(run, dirs["output"], script, interpreter),
        env=env,
        limits=limits_for(parser, config, user),
        timeout_s=parser.timeout_s or config.default_timeout_s,
    )


def command(run: Run, output_dir: Path, script: Path, interpreter: Path) -> list[str]:
    """The run's argv: the script with its args, or the notebook executor of its engine."""
    parser = run.parser
    if parser.kind is ParserKind.NOTEBOOK:
        return notebooks.build_command(
            interpreter,
            script,
            output_dir / notebooks.OUTPUT_NOTEBOOK,
            run.args or {},
            run.positional or [],
            engine=parser.engine,
        )
    return build_command(interpreter, script, run.args or {}, run.positional or [])


def limits_for(parser: Parser, config: Config, user: SandboxUser | None) -> Limits:
    """The parser's limits; without a sandbox user, no process count limit."""
    limits = sandbox.build_limits(parser, config)
    if user is None:
        # RLIMIT_NPROC counts every process of the user: without a sandbox user it would count
        # the worker's own user's (a desktop session, say), not the parser's.
        limits = dataclasses.replace(limits, processes=0)
    return limits


def state_dir_for(config: Config, parser: Parser) -> Path:
    """The parser's state folder. One that an earlier release kept under the parser's name is
    moved here on first use (atomically: of two workers racing, one moves it)."""
    path = config.state_dir / str(parser.id)
    legacy = config.legacy_state_dir / parser.name
    if not path.exists() and legacy.is_dir() and not legacy.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # the other worker moved it
            legacy.rename(path)
            log.info("state of parser %s moved from %s to %s", parser.name, legacy, path)
    return path
