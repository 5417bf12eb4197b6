"""All of Parseq's settings, read from ``PARSEQ_*`` environment variables.

This is the only module that reads ``os.environ``. Every setting has a default that gives the
embedded all-in-one mode (SQLite, local storage, in-memory broker) under ``./var``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from parseq.core.config_checks import check
from parseq.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Config:
    """Settings of one Parseq process. Build with :meth:`from_env`; override with ``replace``."""

    #: SQLAlchemy URL: ``sqlite:///path`` or ``postgresql://user@host/db``.
    database_url: str = ""
    #: ``memory://`` (in-process), ``amqp://user:pass@host:5672/vhost`` or ``redis://host:6379/0``.
    broker_url: str = "memory://"
    #: The broker's ``consumer_timeout`` (RabbitMQ: 30 min unless raised, as docker-compose
    #: does), in seconds: a worker warns at start when runs may outlast it.
    broker_consumer_timeout_s: float = 1800.0
    #: Dramatiq queue that runs are sent to; workers consume the same name.
    queue_name: str = "parseq"
    #: ``file:///abs/path`` or ``s3://bucket/prefix``.
    storage_url: str = ""
    #: S3-compatible endpoint (MinIO, Yandex Object Storage, moto); empty = AWS.
    s3_endpoint_url: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_region: str = "us-east-1"
    #: Folders the parser paths are relative to.
    parsers_dir: Path = PROJECT_ROOT / "parsers"
    notebooks_dir: Path = PROJECT_ROOT / "notebooks"
    #: Cached per-parser virtualenvs.
    envs_dir: Path = PROJECT_ROOT / "envs"
    #: What fills a parser's virtualenv: ``uv``, ``pip``, or ``auto`` (uv, else pip).
    env_installer: str = "auto"
    #: Longest an environment build (virtualenv + install) may take, in seconds.
    env_build_timeout_s: float = 900.0
    #: Least-recently-used envs are evicted past these limits (0 = no limit).
    envs_max_count: int = 50
    envs_max_bytes: int = 10 * 1024**3
    #: Allow requirement lines that can run arbitrary installers or fetch from anywhere
    #: (``-e``, ``-r``, ``--find-links``, local paths, direct URLs).
    env_allow_unsafe_requirements: bool = False
    #: Comma-separated index URLs a parser may name with ``--index-url``/``--extra-index-url``.
    env_allowed_index_urls: str = ""
    #: The package index that requirement locks are resolved against and envs install from
    #: (a mirror, a private index); empty = uv's and pip's own default (PyPI).
    package_index_url: str = ""
    #: Resolve a parser's requirements once, when they change, into a lock with hashes that
    #: every worker installs (``uv pip compile --generate-hashes``). Off: each machine
    #: resolves the requirement lines itself when it builds the env.
    lock_requirements: bool = True
    #: Longest a requirements resolve may take, in seconds.
    lock_timeout_s: float = 300.0
    #: Largest parser code accepted (a script, a notebook, a folder archive), in bytes.
    code_max_bytes: int = 50 * 1024**2
    #: What a folder archive may unpack to: bytes in all, and files.
    code_max_unpacked_bytes: int = 200 * 1024**2
    code_max_files: int = 10_000
    #: Working data: SQLite file, local storage, run working directories, parser state.
    var_dir: Path = PROJECT_ROOT / "var"
    #: Wall-clock limit of a run when its parser sets none, in seconds.
    default_timeout_s: float = 3600.0
    #: Time a timed-out or cancelled run gets between SIGTERM and SIGKILL, in seconds.
    kill_grace_s: float = 2.0
    #: How often a worker records a heartbeat for each run it executes and checks for a cancel
    #: request, in seconds.
    heartbeat_interval_s: float = 1.0
    #: A ``running`` run whose heartbeat is older than this is taken as lost with its worker
    #: (killed, machine gone) and marked ``error`` or retried, in seconds.
    heartbeat_timeout_s: float = 60.0
    #: How often the reaper looks for lost runs, in seconds.
    reaper_interval_s: float = 10.0
    #: Delay before retry ``n`` is ``base * 2**(n-1)`` capped at ``max``, then jittered, seconds.
    retry_backoff_base_s: float = 5.0
    retry_backoff_max_s: float = 600.0
    #: Sandbox limits of a parser process when its parser sets none; 0 = no limit.
    #: Address space (RLIMIT_AS), bytes.
    max_memory_bytes: int = 4 * 1024**3
    #: CPU time (RLIMIT_CPU) of each process, seconds.
    max_cpu_s: float = 3600.0
    #: Processes of the sandbox user (RLIMIT_NPROC; not enforced for root).
    max_processes: int = 256
    #: Largest file a parser may write (RLIMIT_FSIZE), bytes.
    max_file_bytes: int = 1024**3
    #: Open file descriptors (RLIMIT_NOFILE).
    max_open_files: int = 1024
    #: Largest run args JSON accepted (it travels in an environment variable and argv), bytes.
    max_args_bytes: int = 64 * 1024
    #: When the worker runs as root, parsers run as this user (no write access to Parseq's code,
    #: database or other parsers' state). ``none`` runs them as the worker's own user.
    run_as_user: str = "nobody"
    #: When set (and the worker runs as root), each parser runs as a user id of its own, this
    #: number + the parser's id (no passwd entry needed), instead of ``run_as_user``: parsers
    #: running at the same moment cannot reach each other's files. 0 = off.
    run_as_uid_base: int = 0
    #: Let ``parseq worker`` run parsers as its own user (not root, nor given the capabilities
    #: to switch users): they could then read its files and signal it. Off: it refuses to start.
    allow_shared_user: bool = False
    #: Fork servers each worker process keeps, one per recently used env: a run's script is
    #: forked from a pre-started interpreter of its env instead of starting one (an
    #: interpreter's start-up less per run; runs of an env then share its address-space
    #: layout and hash seed).
    #: 0 = every run starts a fresh interpreter.
    fork_servers: int = 8
    #: Python that runs parsers without a virtualenv of their own; empty = the one running
    #: Parseq. With ``run_as_user`` it must be readable by that user (not under a 0700 /root).
    python: str = ""
    #: Bytes of stderr kept as a failed run's error message.
    error_tail_bytes: int = 2000
    #: Largest run log stored, in bytes; the rest is cut with a marker.
    max_log_bytes: int = 10 * 1024 * 1024
    #: How long a worker keeps retrying its database writes through a database outage, seconds.
    db_retry_s: float = 120.0
    #: Upload tries per result file before the run waits for storage, and the first pause
    #: between them (doubling), seconds.
    upload_attempts: int = 3
    upload_backoff_s: float = 1.0
    #: How often a worker retries the uploads of runs waiting for storage, seconds (also their
    #: heartbeat while they wait: keep it under the heartbeat timeout).
    retry_interval_s: float = 10.0
    #: Keep run working directories after their files are stored (for debugging).
    keep_workdirs: bool = False
    #: Worker threads per worker process (and in ``parseq up``).
    worker_threads: int = 2
    #: How often the scheduler re-reads schedules from the database (the most an edit, disable or
    #: delete waits to take effect) and a standby scheduler tries to become the active one, in s.
    scheduler_sync_interval_s: float = 2.0
    #: A due occurrence missed by more than this (scheduler down or stalled) is not run but
    #: recorded as missed; within it, the missed occurrences coalesce into one catch-up run, in s.
    schedule_grace_s: float = 300.0
    #: How often the scheduler sweeps pending runs the broker never accepted, in seconds.
    sweep_interval_s: float = 10.0
    #: A pending run whose message never reached the broker is re-sent after this, in seconds.
    sweep_pending_after_s: float = 30.0
    #: Parser state (``PARSEQ_STATE_DIR``) lives in storage and is copied to each worker for a
    #: run (``parseq.worker.state``). Its cap per parser, past which page-cache entries are
    #: evicted oldest first, in bytes; 0 = no cap.
    state_max_bytes: int = 1024**3
    #: A parser's state lease not renewed for this long (its holder died) is free again, in s.
    state_lease_ttl_s: float = 30.0
    #: Longest a worker thread waits for a parser's state lease before the run goes back to the
    #: queue to try again later (the thread serves other runs meanwhile), in seconds.
    state_wait_s: float = 10.0
    #: Longest a run waits for its parser's state in all, counted from when it was queued; then
    #: it fails naming the holder, in seconds.
    state_max_wait_s: float = 3600.0
    #: Web server bind address.
    host: str = "127.0.0.1"
    port: int = 8000
    #: Flask secret key (sessions, CSRF). Generated into ``var/`` when empty.
    secret_key: str = ""
    #: Password of the ``admin`` user that ``parseq up`` creates on first start; empty = a random
    #: one, printed once.
    admin_password: str = ""
    #: Send session cookies over HTTPS only, always. Without it they are ``Secure`` (and HSTS is
    #: sent) on requests that came over HTTPS, directly or through a trusted proxy.
    secure_cookies: bool = False
    #: Reverse proxies in front of Parseq whose ``X-Forwarded-For/-Proto/-Host/-Port`` headers
    #: are trusted (werkzeug's ``ProxyFix``); 0 = none, the client connects directly.
    trusted_proxy_count: int = 0
    #: An admin session ends this long after login, used or not, in seconds.
    session_max_age_s: float = 12 * 3600.0
    #: An admin session ends after this long without a request, in seconds.
    session_idle_timeout_s: float = 3600.0
    #: Failed admin logins (per username and per client address) and failed API tokens (per
    #: address) allowed within the window; more are refused until the window passes.
    login_max_failures: int = 10
    login_failure_window_s: float = 900.0
    #: Where failure counters live: ``memory://`` (per process) or ``redis://host:6379/0``
    #: (shared by every web process: use it when more than one serves the admin).
    throttle_storage_url: str = "memory://"
    #: Fernet key that encrypts parser secrets at rest. Generated into ``var/`` when empty.
    secrets_key: str = ""
    #: Comma-separated previous Fernet keys: still decrypt, never encrypt (key rotation).
    secrets_old_keys: str = ""
    #: Runs per page in list endpoints, and the largest page a client may ask for.
    page_size: int = 50
    max_page_size: int = 500
    #: Longest ``?wait=S`` a client may ask ``POST /parsers/<name>/runs`` to wait, in seconds.
    max_wait_s: float = 60.0
    #: Answer S3 downloads with a 302 to a presigned URL instead of streaming them through.
    s3_presign: bool = False
    #: How long a presigned download URL stays valid, in seconds.
    s3_presign_expires_s: int = 300
    #: Largest ``output.txt`` served as ``?format=json`` (parsed in memory), in bytes.
    max_json_output_bytes: int = 64 * 1024 * 1024
    #: Largest ``.ipynb`` rendered as ``?format=html`` (converted in memory), in bytes.
    max_render_bytes: int = 32 * 1024 * 1024
    #: How often a worker process records its heartbeat in the ``workers`` table, in seconds.
    worker_heartbeat_interval_s: float = 5.0
    #: A worker row unseen for this long (a worker killed without a clean stop) is dropped from
    #: ``workers`` and health, in seconds; 0 = kept forever.
    worker_prune_after_s: float = 3600.0
    #: Longest a process waits for another one's schema migration (PostgreSQL advisory lock)
    #: before it gives up naming the holder, in seconds. A schema at head takes no lock.
    migration_lock_timeout_s: float = 300.0
    #: How this process names itself to PostgreSQL (``pg_stat_activity``, lock-wait errors);
    #: the CLI sets ``parseq <command>``. Not read from the environment.
    application_name: str = "parseq"
    #: Base URL of Parseq as its users reach it, for the links in notifications; empty =
    #: ``http://HOST:PORT``.
    public_url: str = ""
    #: Notification defaults of parsers that set none (``parseq.services.notify``). Events: error,
    #: timeout, cancelled, recovered, empty, slow (comma-separated).
    notify_events: str = "error,timeout,recovered,empty"
    #: Webhook URL (JSON POST), its HMAC-SHA256 signing secret and body format (json, slack).
    notify_webhook_url: str = ""
    notify_webhook_secret: str = ""
    notify_webhook_format: str = "json"
    #: Comma-separated e-mail addresses.
    notify_email_to: str = ""
    #: A completed run longer than this is ``slow``, in seconds; 0 = never.
    notify_slow_after_s: float = 0.0
    #: At most one mail per parser per this many seconds, the rest in a summary; 0 = each.
    notify_email_digest_s: float = 0.0
    #: Tries per webhook delivery (5xx, timeouts, refused connections), the first pause
    #: between them (doubling) and each request's timeout, in seconds.
    notify_attempts: int = 4
    notify_backoff_s: float = 2.0
    notify_timeout_s: float = 10.0
    #: SMTP server of notification mails: security ``starttls``, ``ssl`` or ``none``.
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = "parseq@localhost"
    #: ``/metrics``: a bearer token it requires; without one, the comma-separated networks
    #: (CIDR) it answers.
    metrics_token: str = ""
    metrics_networks: str = "127.0.0.0/8,::1/128"
    #: Largest live log a running run keeps in the database for ``/runs/<id>/log``, in bytes.
    live_log_max_bytes: int = 1024 * 1024
    #: Logging level of Parseq's own processes.
    log_level: str = "INFO"
    #: Extra Flask settings (tests); not read from the environment.
    flask: Mapping[str, Any] = field(default_factory=dict)
    #: What parser processes inherit from ours: PATH and locale only (see ``runner.build_env``).
    child_env: Mapping[str, str] = field(default_factory=dict)
    #: What the env builder (virtualenv, uv, pip) inherits: PATH, HOME, locale, proxies, TLS
    #: certificates and UV_*/PIP_* settings; never Parseq's own secrets.
    installer_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def runs_dir(self) -> Path:
        """Working directories of runs in progress."""
        return self.var_dir / "runs"

    @property
    def state_dir(self) -> Path:
        """Per-parser folders that persist between runs (``PARSEQ_STATE_DIR``), named by the
        parser's id, so renaming a parser keeps its state."""
        return self.var_dir / "parser-state"

    @property
    def legacy_state_dir(self) -> Path:
        """Where parser state was kept, by parser name, before it was kept by id (moved on
        first use: ``launch.state_dir_for``)."""
        return self.var_dir / "state"

    @property
    def code_dir(self) -> Path:
        """Parser code versions unpacked on this machine, by content hash."""
        return self.var_dir / "code"

    @property
    def sdk_dir(self) -> Path:
        """Copies of the parser SDK that parser processes import (``PYTHONPATH``)."""
        return self.var_dir / "sdk"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read every setting from ``PARSEQ_<NAME>`` variables, then apply ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("flask", "child_env", "installer_env", "application_name"):
                continue
            raw = env.get(f"PARSEQ_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, raw, type(getattr(_DEFAULTS, f.name)))
        values["child_env"] = {
            k: v for k, v in env.items() if k in ("PATH", "LANG") or k.startswith("LC_")
        }
        values["installer_env"] = installer_environ(env)
        values.update(overrides)
        index = values.get("package_index_url")
        if index:  # what uv and pip read: the env builds and the lock resolves use it alike
            values["installer_env"] = {
                **values["installer_env"],
                "UV_INDEX_URL": index,
                "PIP_INDEX_URL": index,
            }
        return cls(**values).resolved()

    def resolved(self) -> Config:
        """Fill the defaults that depend on other settings (paths under ``var_dir``)."""
        var_dir = Path(self.var_dir).resolve()
        changes: dict[str, Any] = {
            "var_dir": var_dir,
            "parsers_dir": Path(self.parsers_dir).resolve(),
            "notebooks_dir": Path(self.notebooks_dir).resolve(),
            "envs_dir": Path(self.envs_dir).resolve(),
        }
        if not self.database_url:
            changes["database_url"] = f"sqlite:///{var_dir / 'parseq.db'}"
        elif self.database_url.startswith(("postgresql://", "postgres://")):
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; our driver is psycopg2.
            changes["database_url"] = (
                "postgresql+psycopg2://" + self.database_url.split("://", 1)[1]
            )
        if not self.storage_url:
            changes["storage_url"] = (var_dir / "storage").as_uri()
        check(self)
        return replace(self, **changes)


_INSTALLER_VARS = frozenset(
    {"PATH", "HOME", "LANG", "XDG_CACHE_HOME", "XDG_DATA_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR"}
    | {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC"}
)


def installer_environ(env: Mapping[str, str]) -> dict[str, str]:
    """The variables an installer needs to reach an index (proxies, certificates, its cache)."""
    return {
        k: v
        for k, v in env.items()
        if k in _INSTALLER_VARS
        or k.startswith(("LC_", "UV_", "PIP_"))
        or k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }


def _coerce(name: str, raw: str, kind: type) -> Any:
    """Turn an environment string into the type of the setting's default."""
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if issubclass(kind, Path):
            return Path(raw).expanduser()
        return kind(raw)
    except ValueError:
        raise ConfigError(f"PARSEQ_{name.upper()}={raw!r} is not a valid {kind.__name__}") from None


_DEFAULTS = Config()
