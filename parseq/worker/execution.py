"""The worker's side of a run: claim it, run it in the sandbox, store its files, record its end.

:func:`execute_run` is what every worker (the Dramatiq actor, ``parseq run``) calls; it is
idempotent, so a redelivered message changes nothing. Runs are created, listed and cancelled in
:mod:`parseq.services.runs`; a run's files and end are written to the database by
:mod:`parseq.services.recording`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy.orm.attributes import set_committed_value

from parseq.core.config import Config
from parseq.core.errors import ParseqError, ScriptNotFound
from parseq.core.redaction import redact_json_file, redact_text
from parseq.db import statements
from parseq.db.models import Parser, ParserKind, Run, RunStatus, RunTrigger, db, kept_loaded, utcnow
from parseq.db.reconnect import retry_db
from parseq.db.runs import LOG_FILE, OUTPUT_FILE
from parseq.envs import cache as envs
from parseq.notebooks import validate as notebooks
from parseq.queue.broker import send_run
from parseq.sandbox import limits as sandbox
from parseq.sandbox import runner, supervisor
from parseq.services import metrics, recording, runs
from parseq.services.livelog import Capture as LiveLogCapture
from parseq.services.registry import resolve_script
from parseq.services.retries import schedule_retry
from parseq.services.runs import get_run
from parseq.worker import code as run_code
from parseq.worker import collect, uploads
from parseq.worker.launch import Launch, prepare, state_dir_for
from parseq.worker.state import HeldState, held
from parseq.worker.watchdog import Watchdog, record_progress

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
    result = db.session.execute(statements.CLAIM_RUN, params)
    return result.rowcount == 1


def _claim_and_load(run_id: int) -> Run | None:
    """Claim the run and load it with its parser, in one transaction; None if not claimed."""
    if not _claim(run_id):
        db.session.rollback()
        return None
    run = db.session.execute(statements.LOAD_RUN, {"run_id": run_id}).scalar_one()
    db.session.commit()  # the run stays loaded (execute_run: kept_loaded)
    return run


#: Envs held in use (safe from eviction) by the runs executing in this process.
_env_leases: dict[int, envs.Env] = {}


def interpreter_for(
    parser: Parser, run: Run | None = None, code: run_code.RunCode | None = None
) -> Path:
    """The absolute path of the Python that runs the parser (script or notebook): its cached
    virtualenv's, built on first use (from its code version's requirements lock, if any).
    With ``run``, the env key is set on the run (written by the run's first heartbeat or its
    end) and the env stays in use until :func:`release_env`; a failed build stores
    ``env-build.log``. ``code``: the run's code, when the caller has it already."""
    config: Config = current_app.extensions["parseq"].config
    if code is None:
        code = run_code.RunCode(resolve_script(config, parser), None, None)
    requirements = run_code.requirements_for(config, parser, code)

    def heartbeat() -> contextlib.AbstractContextManager[object]:
        # A first build can take minutes: keep the run's heartbeat going meanwhile.
        if run is None:
            return contextlib.nullcontext()
        return Watchdog(current_app._get_current_object(), run.id, config.heartbeat_interval_s)

    try:
        env = envs.acquire(
            config,
            requirements.lines,
            while_building=heartbeat,
            on_build=metrics.count_env_build,
            python=sandbox.base_python(config),
        )
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


def execute_run(run_id: int, retry: bool = True, requeue: bool = False) -> RunStatus | None:
    """Execute a pending run end to end; return its final status (``running`` while its files
    wait for storage, ``pending`` when it went back to the queue to wait for its parser's
    state: only with ``requeue``, for a worker that consumes the queue), or None if not
    claimed. A failure the parser allows retries for enqueues the next attempt (unless
    ``retry`` is False). Database writes ride out a database restart
    (:func:`reconnect.retry_db`)."""
    config: Config = current_app.extensions["parseq"].config
    # The run and parser stay loaded across this run's commits: each write is a statement of
    # its own, and reloading them after every commit cost a round trip apiece.
    with kept_loaded():
        return _claim_and_execute(run_id, config, retry, requeue)


def _claim_and_execute(run_id: int, config: Config, retry: bool, requeue: bool) -> RunStatus | None:
    run = retry_db(lambda: _claim_and_load(run_id), config.db_retry_s, "claim")
    if run is None:
        if not retry_db(lambda: _not_due_yet(run_id), config.db_retry_s, "due check"):
            log.info("run %s is not pending; message ignored", run_id)
        return None
    workdir = config.runs_dir / str(run_id)
    try:
        with held(run, config, state_dir_for(config, run.parser), requeue) as state:
            if state is None:
                return RunStatus.PENDING  # it waits for its parser's state in the queue
            status = _execute(run, config, workdir, state, retry)
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
    send_run(run_id, delay_s=left_s)
    return True


def _execute(
    run: Run, config: Config, workdir: Path, state: HeldState, retry: bool = True
) -> RunStatus:
    """Prepare, start, supervise and record one claimed run (its parser's state held)."""
    storage = current_app.extensions["parseq"].storage
    code = run_code.for_run(config, storage, run.parser, run.code)  # fetched once per version
    script = code.script
    launch = prepare(run, config, workdir, script, lambda: interpreter_for(run.parser, run, code))
    run_id, kind = run.id, run.parser.kind
    try:
        if launch.user is not None:
            sandbox.prepare_dirs(launch.user, list(launch.dirs.values()), launch.state_dir, run_id)
        folder = code.folder
        shipped = collect.copy_folder(folder, launch.dirs["output"], launch.user) if folder else {}
        outcome, ended_at, stdout = _supervise(run, launch, config, workdir)
        retry_db(
            lambda: record_progress(get_run(run_id), launch.progress_file, launch.secrets.values()),
            config.db_retry_s,
        )
        state_warnings = state.commit()  # the process is gone: its state is final
        if kind is ParserKind.NOTEBOOK:
            output_nb = launch.dirs["output"] / notebooks.OUTPUT_NOTEBOOK
            redact_json_file(output_nb, launch.secrets.values())
        found = gather_files(
            launch.dirs["output"], launch.log_path, shipped, stdout, outcome.status
        )
        found.warnings = collect.finish_warnings([*state_warnings, *found.warnings])
        pending = recording.Pending(
            run_id,
            outcome.status.value,
            outcome.exit_code,
            redact_text(outcome.error, launch.secrets.values()),
            uploads.relative_files(workdir, found.files),
            retry=retry,
            warnings=found.warnings,
            ended_at=ended_at.isoformat(),
        )
        return uploads.store_and_finish(config, workdir, found.files, pending)
    finally:
        # After the run's end is recorded (off the path to "completed"); the process is gone.
        if launch.user is not None:
            sandbox.release_state(launch.state_dir, run_id)


def _supervise(
    run: Run, launch: Launch, config: Config, workdir: Path
) -> tuple[supervisor.Outcome, datetime, collect.StdoutCopy]:
    """Start the run's process and watch it to its end, with the run's heartbeat meanwhile."""
    proc = runner.spawn(
        launch.argv,
        launch.env,
        cwd=launch.dirs["output"],
        limits=sandbox.rlimits(launch.limits),
        user=launch.user,
        fork_servers=config.fork_servers,
    )
    log.info("run %s of %s started pid=%d", run.id, run.parser.name, proc.pid)
    secrets = launch.secrets.values()
    watchdog = Watchdog(
        current_app._get_current_object(),
        run.id,
        config.heartbeat_interval_s,
        launch.progress_file,
        secrets,
        extra_values={"env_key": run.env_key},
        live_log=LiveLogCapture(launch.log_path, config.live_log_max_bytes),
    )
    watchdog.start()
    stdout = collect.StdoutCopy(workdir / STDOUT_FILE, launch.limits.file_bytes)
    try:
        outcome = supervisor.supervise(
            proc,
            launch.log_path,
            timeout_s=launch.timeout_s,
            kill_grace_s=config.kill_grace_s,
            max_log_bytes=config.max_log_bytes,
            error_tail_bytes=config.error_tail_bytes,
            cancel=watchdog.cancel,
            on_line=stdout,
            secrets=list(secrets),
            run_uid=None if launch.user is None else launch.user.uid,
        )
        ended_at = utcnow()  # the run's finished_at, however late a database lets it in
    finally:
        watchdog.stop()
        stdout.close()
    return outcome, ended_at, stdout


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


def run_now(
    parser: Parser,
    args: Mapping[str, Any] | None = None,
    positional: Sequence[Any] | None = None,
) -> Run:
    """Create and execute a run in this process (``parseq run``), bypassing the broker."""
    run = runs.create_run(parser, args, RunTrigger.MANUAL, enqueue=False, positional=positional)
    execute_run(run.id, retry=False)  # no worker here to take a delayed retry
    db.session.refresh(run)
    return run
