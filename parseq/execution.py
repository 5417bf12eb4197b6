"""The worker's side of a run: claim it, run it in the sandbox, store its files, record its end.

:func:`execute_run` is what every worker (the Dramatiq actor, ``parseq run``) calls; it is
idempotent, so a redelivered message changes nothing. Runs are created, listed and cancelled in
:mod:`parseq.runs`; a run's files and end are written to the database by :mod:`parseq.recording`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import current_app
from sqlalchemy.orm.attributes import set_committed_value

from parseq import (
    code_cache,
    collect,
    envs,
    notebooks,
    recording,
    runner,
    sandbox,
    sdk,
    supervisor,
    uploads,
)
from parseq.config import Config
from parseq.errors import ParseqError, ScriptNotFound
from parseq.livelog import Capture as LiveLogCapture
from parseq.models import Parser, ParserKind, Run, RunStatus, db, kept_loaded, utcnow
from parseq.reconnect import retry_db
from parseq.redaction import redact_json_file, redact_text
from parseq.registry import resolve_script
from parseq.retries import schedule_retry
from parseq.runs import LOG_FILE, OUTPUT_FILE, get_run
from parseq.watchdog import Watchdog, record_progress

log = logging.getLogger(__name__)

ENV_BUILD_LOG = "env-build.log"
#: The parser's stdout, kept beside the run log (the worker's) until it becomes ``output.txt``.
STDOUT_FILE = "stdout.txt"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
#: A retry whose backoff ends within this many seconds may start now.
EARLY_S = 0.5


def claim(run_id: int) -> bool:
    """Atomically move a due run from ``pending`` to ``running``; False if it is not pending
    or its retry backoff has more than :data:`EARLY_S` to go.

    This makes the actor idempotent: a redelivered message for a run that already started or
    finished changes nothing.
    """
    claimed = _claim(run_id)
    db.session.commit()
    return claimed


def _claim(run_id: int) -> bool:
    """:func:`claim`'s update, in the session's transaction."""
    now = utcnow()
    due = now + timedelta(seconds=EARLY_S)
    params = {"run_id": run_id, "now": now, "due": due, "worker_id": WORKER_ID}
    result = db.session.execute(_CLAIM, params)
    return result.rowcount == 1


def _claim_and_load(run_id: int) -> Run | None:
    """Claim the run and load it with its parser, in one transaction; None if not claimed."""
    if not _claim(run_id):
        db.session.rollback()
        return None
    run = db.session.execute(_LOAD, {"run_id": run_id}).scalar_one()
    db.session.commit()  # the run stays loaded (execute_run: kept_loaded)
    return run


# The claim and the load are built once, with bound parameters: every run executes them, and
# building a statement (and its cache key) per run cost more CPU than the rest of the claim.
_runs = Run.__table__
_CLAIM = (
    sa.update(_runs)
    .where(
        _runs.c.id == sa.bindparam("run_id"),
        _runs.c.status == RunStatus.PENDING,
        sa.or_(_runs.c.not_before.is_(None), _runs.c.not_before <= sa.bindparam("due")),
    )
    .values(
        status=RunStatus.RUNNING,
        started_at=sa.bindparam("now", type_=_runs.c.started_at.type),
        heartbeat_at=sa.bindparam("now", type_=_runs.c.started_at.type),
        worker_id=sa.bindparam("worker_id", type_=_runs.c.worker_id.type),
    )
)
_LOAD = (
    sa.select(Run)
    .options(sa_orm.joinedload(Run.parser), sa_orm.joinedload(Run.code))
    .where(Run.id == sa.bindparam("run_id"))
)


#: Envs held in use (safe from eviction) by the runs executing in this process.
_env_leases: dict[int, envs.Env] = {}


def interpreter_for(
    parser: Parser, run: Run | None = None, code: code_cache.RunCode | None = None
) -> Path:
    """The absolute path of the Python that runs the parser (script or notebook): its cached
    virtualenv's, built on first use (from its code version's requirements lock, if any).
    With ``run``, the env key is set on the run (written by the run's first heartbeat or its
    end) and the env stays in use until :func:`release_env`; a failed build stores
    ``env-build.log``. ``code``: the run's code, when the caller has it already."""
    config: Config = current_app.extensions["parseq"].config
    if code is None:
        code = code_cache.RunCode(resolve_script(config, parser), None, None)
    requirements = code_cache.requirements_for(config, parser, code)

    def heartbeat() -> contextlib.AbstractContextManager[object]:
        # A first build can take minutes: keep the run's heartbeat going meanwhile.
        if run is None:
            return contextlib.nullcontext()
        return Watchdog(current_app._get_current_object(), run.id, config.heartbeat_interval_s)

    try:
        env = envs.acquire(config, requirements.lines, while_building=heartbeat)
    except envs.EnvBuildFailed as exc:
        if run is not None:
            run.env_key = exc.key
            log_path = config.runs_dir / str(run.id) / ENV_BUILD_LOG
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(exc.build_log)
            uploads.store_files(run, {ENV_BUILD_LOG: log_path})
        raise
    if run is None:
        env.release()
    else:
        _env_leases[run.id] = env
        set_committed_value(run, "env_key", env.key)
    # A cache hit is every run's case, and its key is on the run: not worth a log line apiece.
    level = logging.INFO if env.built else logging.DEBUG
    log.log(
        level,
        "parser %s uses env %s (%s)",
        parser.name,
        env.key,
        "built" if env.built else "cached",
    )
    return env.python


def release_env(run_id: int) -> None:
    """Let the env of a finished run be evicted again."""
    env = _env_leases.pop(run_id, None)
    if env is not None:
        env.release()


def execute_run(run_id: int, retry: bool = True) -> RunStatus | None:
    """Execute a pending run end to end; return its final status (``running`` while its files
    wait for storage), or None if not claimed. A failure the parser allows retries for enqueues
    the next attempt (unless ``retry`` is False). Database writes ride out a database restart
    (:func:`reconnect.retry_db`)."""
    config: Config = current_app.extensions["parseq"].config
    # The run and parser stay loaded across this run's commits: each write is a statement of
    # its own, and reloading them after every commit cost a round trip apiece.
    with kept_loaded():
        return _claim_and_execute(run_id, config, retry)


def _claim_and_execute(run_id: int, config: Config, retry: bool) -> RunStatus | None:
    run = retry_db(lambda: _claim_and_load(run_id), config.db_retry_s, "claim")
    if run is None:
        if not retry_db(lambda: _not_due_yet(run_id), config.db_retry_s, "due check"):
            log.info("run %s is not pending; message ignored", run_id)
        return None
    workdir = config.runs_dir / str(run_id)
    try:
        status = _execute(run, config, workdir, retry)
    except Exception as exc:
        db.session.rollback()
        if retry_db(lambda: not _exists(run_id), config.db_retry_s):
            log.info("run %s was deleted while it ran", run_id)
            return None
        message = exc.message if isinstance(exc, ParseqError) else f"internal error: {exc!r}"
        if not isinstance(exc, ParseqError):
            log.exception("run %s failed inside Parseq", run_id)
        retryable = not isinstance(exc, ScriptNotFound)  # a missing file will stay missing

        def fail() -> bool:
            return recording.finish(get_run(run_id), RunStatus.ERROR, None, message)

        if retry_db(fail, config.db_retry_s) and retry:
            schedule_retry(get_run(run_id), config, retryable=retryable)
        status = RunStatus.ERROR
    finally:
        release_env(run_id)
        if not config.keep_workdirs and not uploads.is_pending(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
    log.info("run %s finished: %s", run_id, status.value)
    return status


def _exists(run_id: int) -> bool:
    return db.session.execute(db.select(Run.id).where(Run.id == run_id)).first() is not None


def _not_due_yet(run_id: int) -> bool:
    """A retry whose backoff has not passed (its message came early: redelivered, resent after
    a restart) goes back to the broker for the time left."""
    run = db.session.get(Run, run_id)
    if run is None or run.status is not RunStatus.PENDING or run.not_before is None:
        return False
    left_s = (run.not_before - utcnow()).total_seconds()
    if left_s <= EARLY_S:
        return False
    from parseq.tasks import send_run

    send_run(run_id, delay_s=left_s)
    return True


def _execute(run: Run, config: Config, workdir: Path, retry: bool = True) -> RunStatus:
    parser = run.parser
    storage = current_app.extensions["parseq"].storage
    code = code_cache.for_run(config, storage, parser, run.code)
    script = code.script
    # Each folder the parser writes is its own; the run log stays in ``workdir``, the worker's.
    # The output folder is also its working directory: what it writes where it runs is kept.
    dirs = {name: workdir / name for name in ("output", "home", "tmp", "progress")}
    state_dir = state_dir_for(config, parser)
    for path in [*dirs.values(), state_dir]:
        path.mkdir(parents=True, exist_ok=True)
    progress_file = dirs["progress"] / sdk.PROGRESS_FILE
    secrets = dict(parser.secrets or {})  # raises SecretsKeyError when the key is wrong
    interpreter = interpreter_for(parser, run, code)
    sdk_path = sdk.install_sdk(config.sdk_dir)
    user = sandbox.sandbox_user(config, parser_id=parser.id)
    if user is not None:
        sandbox.check_reachable(user, interpreter)
        sandbox.check_reachable(user, script, need=0o4)
        sandbox.harden_var(config, config.database_url)
        sandbox.share_sdk(config.sdk_dir, sdk_path)
        workdir.chmod(0o711)
    if parser.kind is ParserKind.NOTEBOOK:
        output_nb = dirs["output"] / notebooks.OUTPUT_NOTEBOOK
        argv = notebooks.build_command(
            interpreter,
            script,
            output_nb,
            run.args or {},
            run.positional or [],
            engine=parser.engine,
        )
    else:
        argv = runner.build_command(interpreter, script, run.args or {}, run.positional or [])
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
    timeout_s = parser.timeout_s or config.default_timeout_s
    log_path = workdir / LOG_FILE
    limits = sandbox.build_limits(parser, config)
    if user is None:
        # RLIMIT_NPROC counts every process of the user: without a sandbox user it would count
        # the worker's own user's (a desktop session, say), not the parser's.
        limits = dataclasses.replace(limits, processes=0)
    run_id, name, parser_kind = run.id, parser.name, parser.kind
    try:
        if user is not None:
            sandbox.prepare_dirs(user, list(dirs.values()), state_dir, run_id)
        folder = code.folder
        shipped = collect.copy_folder(folder, dirs["output"], user) if folder else {}
        rlimits = sandbox.rlimits(limits)
        proc = runner.spawn(
            argv,
            env,
            cwd=dirs["output"],
            limits=rlimits,
            user=user,
            fork_servers=config.fork_servers,
        )
        log.info("run %s of %s started pid=%d", run_id, name, proc.pid)
        watchdog = Watchdog(
            current_app._get_current_object(),
            run_id,
            config.heartbeat_interval_s,
            progress_file,
            secrets.values(),
            extra_values={"env_key": run.env_key},
            live_log=LiveLogCapture(log_path, config.live_log_max_bytes),
        )
        watchdog.start()
        stdout = collect.StdoutCopy(workdir / STDOUT_FILE, limits.file_bytes)
        try:
            outcome = supervisor.supervise(
                proc,
                log_path,
                timeout_s=timeout_s,
                kill_grace_s=config.kill_grace_s,
                max_log_bytes=config.max_log_bytes,
                error_tail_bytes=config.error_tail_bytes,
                cancel=watchdog.cancel,
                on_line=stdout,
                secrets=list(secrets.values()),
                run_uid=None if user is None else user.uid,
            )
            ended_at = utcnow()  # the run's finished_at, however late a database lets it in
        finally:
            watchdog.stop()
            stdout.close()
        retry_db(
            lambda: record_progress(get_run(run_id), progress_file, secrets.values()),
            config.db_retry_s,
        )
        if parser_kind is ParserKind.NOTEBOOK:
            redact_json_file(dirs["output"] / notebooks.OUTPUT_NOTEBOOK, secrets.values())
        found = gather_files(dirs["output"], log_path, shipped, stdout, outcome.status)
        pending = uploads.Pending(
            run_id,
            outcome.status.value,
            outcome.exit_code,
            redact_text(outcome.error, secrets.values()),
            uploads.relative_files(workdir, found.files),
            retry=retry,
            warnings=found.warnings,
            ended_at=ended_at.isoformat(),
        )
        return uploads.store_and_finish(config, workdir, found.files, pending)
    finally:
        # After the run's end is recorded (off the path to "completed"); the process is gone.
        if user is not None:
            sandbox.release_state(state_dir, run_id)


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


def gather_files(
    output_dir: Path,
    log_path: Path,
    shipped: dict[str, str],
    stdout: collect.StdoutCopy,
    status: RunStatus,
) -> collect.Collected:
    """The run's files to store, by name: everything the parser left in its output folder
    (shipped copies it did not change aside), ``output.txt`` (its stdout when it wrote none
    itself, else empty; cut at the file size limit like a file, and so warned about too) and
    the run log; with the warnings the run gets."""
    collect.fill_output(output_dir / OUTPUT_FILE, stdout)
    found = collect.collect(output_dir, shipped, {LOG_FILE: log_path}, stdout.max_bytes)
    results = set(found.files) - {LOG_FILE, OUTPUT_FILE}
    output = found.files.get(OUTPUT_FILE)
    if status is RunStatus.COMPLETED and not results and (not output or not output.stat().st_size):
        found.warnings.append(collect.NO_RESULT)
    found.warnings = collect.finish_warnings(found.warnings)
    return found
