"""The run lifecycle: create and enqueue a run, then claim, execute and record it.

Every entry point (API, admin, CLI, scheduler) creates runs through :func:`create_run`; every
worker executes them through :func:`execute_run`, so status transitions live in one place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from parseq import envs, notebooks, runner, sdk
from parseq import requirements as reqs
from parseq.config import Config
from parseq.errors import BadRequest, Conflict, NotFound, ParseqError
from parseq.models import Parser, ParserKind, Run, RunFile, RunStatus, RunTrigger, db, utcnow
from parseq.registry import resolve_script

log = logging.getLogger(__name__)

OUTPUT_FILE = "output.txt"
LOG_FILE = "run.log"
ENV_BUILD_LOG = "env-build.log"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def get_parser(name: str) -> Parser:
    parser = db.session.execute(db.select(Parser).filter_by(name=name)).scalar_one_or_none()
    if parser is None:
        raise NotFound(f"no parser named {name!r}", parser=name)
    return parser


def get_run(run_id: int) -> Run:
    if not 0 < run_id < 2**63:  # beyond any id; the database driver would overflow
        raise NotFound(f"no run with id {run_id}", run_id=run_id)
    run = db.session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run with id {run_id}", run_id=run_id)
    return run


def check_args(args: object) -> dict[str, Any]:
    """Run arguments must be a JSON object with flag-safe names."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise BadRequest("args must be a JSON object", field="args")
    for name in args:
        runner.validate_arg_name(name)
    return args


def new_run(
    parser: Parser,
    args: Mapping[str, Any] | None = None,
    trigger: RunTrigger = RunTrigger.MANUAL,
    scheduled_for: datetime | None = None,
) -> Run:
    """A ``pending`` run (not yet added to the session) with the parser's default args
    overlaid by ``args``."""
    merged = {**(parser.default_args or {}), **check_args(dict(args) if args else {})}
    return Run(
        parser=parser,
        args=merged,
        trigger=trigger,
        status=RunStatus.PENDING,
        scheduled_for=scheduled_for,
    )


def create_run(
    parser: Parser,
    args: Mapping[str, Any] | None = None,
    trigger: RunTrigger = RunTrigger.MANUAL,
    enqueue: bool = True,
    scheduled_for: datetime | None = None,
) -> Run:
    """Insert a ``pending`` run and send it to the broker. If the broker is down the run stays
    pending rather than being lost: the sweeper (``parseq.sweeper``) sends it again later.

    ``scheduled_for`` is the due time of a schedule occurrence; a second run for the same
    parser and due time raises ``sqlalchemy.exc.IntegrityError`` (the session is rolled back).
    """
    run = new_run(parser, args, trigger, scheduled_for)
    db.session.add(run)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise
    if enqueue:
        enqueue_runs([run])
    return run


def enqueue_runs(batch: Sequence[Run]) -> int:
    """Send committed runs' messages, then record in one update when the broker took them.
    Stops at the first failure (the broker is down; logged) and returns how many were sent."""
    from parseq.tasks import send_run

    sent: list[int] = []
    for run in batch:
        try:
            send_run(run.id)
        except Exception:
            log.exception("run %s could not be enqueued; it stays pending", run.id)
            break
        sent.append(run.id)
    if sent:
        # Outside the session, so its runs are not expired and reloaded (a worker may have
        # claimed them by now; callers show the run as it was queued).
        now = utcnow()
        with db.engine.begin() as conn:
            conn.execute(db.update(Run).where(Run.id.in_(sent)).values(enqueued_at=now))
        for run in batch[: len(sent)]:
            set_committed_value(run, "enqueued_at", now)
    return len(sent)


def claim(run_id: int) -> bool:
    """Atomically move a run from ``pending`` to ``running``; False if it is not pending.

    This makes the actor idempotent: a redelivered message for a run that already started or
    finished changes nothing.
    """
    now = utcnow()
    result = db.session.execute(
        db.update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.PENDING)
        .values(status=RunStatus.RUNNING, started_at=now, heartbeat_at=now, worker_id=WORKER_ID)
    )
    db.session.commit()
    return result.rowcount == 1


#: Envs held in use (safe from eviction) by the runs executing in this process.
_env_leases: dict[int, envs.Env] = {}


def interpreter_for(parser: Parser, run: Run | None = None) -> Path:
    """The absolute path of the Python that runs the parser (script or notebook): its cached
    virtualenv's, built on first use. With ``run``, the env key is recorded on the run and the
    env stays in use until :func:`release_env`; a failed build stores ``env-build.log``."""
    config: Config = current_app.extensions["parseq"].config
    requirements = reqs.for_parser(config, parser, resolve_script(config, parser))
    # A first build can take minutes: keep the run's heartbeat going meanwhile.
    watchdog = None
    if run is not None:
        watchdog = Watchdog(current_app._get_current_object(), run.id, config.heartbeat_interval_s)
        watchdog.start()
    try:
        env = envs.acquire(config, requirements.lines)
    except envs.EnvBuildFailed as exc:
        if run is not None:
            run.env_key = exc.key
            log_path = config.runs_dir / str(run.id) / ENV_BUILD_LOG
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(exc.build_log)
            store_files(run, {ENV_BUILD_LOG: log_path})
        raise
    finally:
        if watchdog is not None:
            watchdog.stop()
    if run is None:
        env.release()
    else:
        _env_leases[run.id] = env
        run.env_key = env.key
        db.session.commit()
    log.info("parser %s uses env %s (%s)", parser.name, env.key, "built" if env.built else "cached")
    return env.python


def release_env(run_id: int) -> None:
    """Let the env of a finished run be evicted again."""
    env = _env_leases.pop(run_id, None)
    if env is not None:
        env.release()


def execute_run(run_id: int) -> RunStatus | None:
    """Execute a pending run end to end; return its final status, or None if not claimed."""
    if not claim(run_id):
        log.info("run %s is not pending; message ignored", run_id)
        return None
    run = get_run(run_id)
    config: Config = current_app.extensions["parseq"].config
    workdir = config.runs_dir / str(run.id)
    try:
        status = _execute(run, config, workdir)
    except Exception as exc:
        db.session.rollback()
        if db.session.get(Run, run_id) is None:
            log.info("run %s was deleted while it ran", run_id)
            return None
        run = get_run(run_id)
        message = exc.message if isinstance(exc, ParseqError) else f"internal error: {exc!r}"
        if not isinstance(exc, ParseqError):
            log.exception("run %s failed inside Parseq", run_id)
        _finish(run, RunStatus.ERROR, None, message)
        status = RunStatus.ERROR
    finally:
        release_env(run_id)
        if not config.keep_workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
    log.info("run %s of %s finished: %s", run.id, run.parser.name, status.value)
    return status


def _execute(run: Run, config: Config, workdir: Path) -> RunStatus:
    parser = run.parser
    script = resolve_script(config, parser)
    dirs = {name: workdir / name for name in ("work", "output", "home", "tmp")}
    state_dir = config.state_dir / parser.name
    for path in [*dirs.values(), state_dir]:
        path.mkdir(parents=True, exist_ok=True)
    progress_file = workdir / sdk.PROGRESS_FILE
    interpreter = interpreter_for(parser, run)
    if parser.kind is ParserKind.NOTEBOOK:
        output_nb = dirs["output"] / notebooks.OUTPUT_NOTEBOOK
        argv = notebooks.build_command(interpreter, script, output_nb, run.args or {})
    else:
        argv = runner.build_command(interpreter, script, run.args or {})
    env = runner.build_env(
        base_env=config.child_env,
        run_id=run.id,
        parser=parser.name,
        args=run.args or {},
        secrets=parser.secrets or {},
        output_dir=dirs["output"],
        state_dir=state_dir,
        home_dir=dirs["home"],
        tmp_dir=dirs["tmp"],
        extra={
            "PYTHONPATH": str(sdk.install_sdk(config.sdk_dir)),
            "PARSEQ_PROGRESS_FILE": str(progress_file),
        },
    )
    timeout_s = parser.timeout_s or config.default_timeout_s
    log_path = workdir / LOG_FILE
    proc = runner.spawn(argv, env, cwd=dirs["work"])
    log.info("run %s of %s started pid=%d", run.id, parser.name, proc.pid)
    watchdog = Watchdog(
        current_app._get_current_object(), run.id, config.heartbeat_interval_s, progress_file
    )
    watchdog.start()
    try:
        outcome = runner.supervise(
            proc,
            log_path,
            timeout_s=timeout_s,
            kill_grace_s=config.kill_grace_s,
            max_log_bytes=config.max_log_bytes,
            error_tail_bytes=config.error_tail_bytes,
            cancel=watchdog.cancel,
        )
    finally:
        watchdog.stop()
    _record_progress(run, progress_file)
    files = collect_files(dirs["output"], log_path)
    store_files(run, files)
    _finish(run, outcome.status, outcome.exit_code, outcome.error)
    return outcome.status


class Watchdog(threading.Thread):
    """Beside a running run: records its heartbeat and notices a cancel request.

    Works in its own app context, so in its own database session.
    """

    def __init__(
        self, app: Flask, run_id: int, interval_s: float, progress_file: Path | None = None
    ) -> None:
        super().__init__(name=f"watchdog-{run_id}", daemon=True)
        self.app = app
        self.run_id = run_id
        self.interval_s = interval_s
        self.progress_file = progress_file
        self._progress_mtime: int | None = None
        self.cancel = threading.Event()
        self._stopped = threading.Event()

    def run(self) -> None:
        with self.app.app_context():
            while not self._stopped.wait(self.interval_s):
                try:
                    self.beat()
                except Exception:  # the database may blip; the run goes on
                    log.exception("heartbeat of run %s failed", self.run_id)
                    db.session.rollback()

    def beat(self) -> None:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        values.update(self._new_progress())
        result = db.session.execute(
            db.update(Run)
            .where(Run.id == self.run_id, Run.status == RunStatus.RUNNING)
            .values(**values)
        )
        db.session.commit()
        if result.rowcount == 0:
            status = db.session.execute(db.select(Run.status).where(Run.id == self.run_id)).scalar()
            if status is RunStatus.CANCELLED or status is None:  # None: deleted with its parser
                log.info("run %s: cancel requested, stopping it", self.run_id)
                self.cancel.set()

    def _new_progress(self) -> dict[str, Any]:
        """The progress columns, when the parser reported since the last beat."""
        if self.progress_file is None:
            return {}
        try:
            mtime = self.progress_file.stat().st_mtime_ns
        except OSError:
            return {}
        if mtime == self._progress_mtime:
            return {}
        self._progress_mtime = mtime
        return sdk.progress_columns(self.progress_file)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


def cancel_run(run: Run) -> Run:
    """Cancel a run: a pending one never starts; a running one's worker kills its process
    group within about ``heartbeat_interval_s + kill_grace_s``. Final runs are a conflict."""
    if run.status.is_final:
        raise Conflict(f"run {run.id} is already {run.status.value}", run_id=run.id)
    result = db.session.execute(
        db.update(Run)
        .where(Run.id == run.id, Run.status == run.status)
        .values(
            status=RunStatus.CANCELLED,
            error="cancelled before it started" if run.status is RunStatus.PENDING else "cancelled",
            finished_at=utcnow() if run.status is RunStatus.PENDING else None,
        )
    )
    db.session.commit()
    db.session.refresh(run)
    if result.rowcount == 0 and not run.status.is_final:
        return cancel_run(run)  # it moved from pending to running meanwhile: try again
    return run


def _record_progress(run: Run, progress_file: Path) -> None:
    """The parser's last report, which it may have made after the last heartbeat."""
    for name, value in sdk.progress_columns(progress_file).items():
        setattr(run, name, value)
    db.session.commit()


def collect_files(output_dir: Path, log_path: Path) -> dict[str, Path]:
    """Result files by name: everything in the output folder, ``output.txt`` (created empty if
    the parser wrote none) and the run log."""
    out = output_dir / OUTPUT_FILE
    if not out.exists():
        out.touch()
    files = {
        p.relative_to(output_dir).as_posix(): p
        for p in sorted(output_dir.rglob("*"))
        if p.is_file() and not p.is_symlink() and not p.name.startswith(sdk.TMP_PREFIX)
    }
    files[LOG_FILE] = log_path
    return files


def store_files(run: Run, files: Mapping[str, Path]) -> None:
    """Upload each file under ``runs/<id>/`` and record its size and sha256 on the run."""
    storage = current_app.extensions["parseq"].storage
    for name, path in files.items():
        key = f"runs/{run.id}/{name}"
        storage.put(key, path)
        run.files.append(
            RunFile(name=name, size=path.stat().st_size, sha256=_sha256(path), storage_key=key)
        )
    db.session.commit()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _finish(run: Run, status: RunStatus, exit_code: int | None, error: str | None) -> None:
    db.session.refresh(run)
    if run.status is RunStatus.CANCELLED and status is not RunStatus.COMPLETED:
        status, error = RunStatus.CANCELLED, "cancelled"  # a cancel request explains the end
    run.status = status
    run.exit_code = exit_code
    run.error = error
    run.finished_at = utcnow()
    db.session.commit()


def run_now(parser: Parser, args: Mapping[str, Any] | None = None) -> Run:
    """Create and execute a run in this process (``parseq run``), bypassing the broker."""
    run = create_run(parser, args, RunTrigger.MANUAL, enqueue=False)
    execute_run(run.id)
    db.session.refresh(run)
    return run
