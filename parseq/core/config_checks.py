"""Checks of the settings' values, run when a :class:`~parseq.core.config.Config` is resolved:
each raises :class:`ConfigError` naming the variable to fix."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from parseq.core.errors import ConfigError

if TYPE_CHECKING:
    from parseq.core.config import Config

#: Bounds of ``run_as_uid_base``: above system and login users, below 2**31 with room for ids.
MIN_UID_BASE = 100_000
MAX_UID_BASE = 2**31 - 2**24
#: Where the login throttle may keep its counters (``limits`` storages Parseq installs for).
THROTTLE_STORAGE_SCHEMES = ("memory://", "redis://", "rediss://", "redis+unix://")


def check(config: Config) -> None:
    """Every check below, in turn."""
    _check_runs(config)
    _check_workers(config)
    _check_web(config)
    _check_notify(config)
    _check_sandbox(config)


def _check_runs(config: Config) -> None:
    """Timeouts, heartbeats, uploads and retries of runs."""
    if config.default_timeout_s <= 0:
        raise ConfigError("PARSEQ_DEFAULT_TIMEOUT_S must be > 0")
    if config.heartbeat_timeout_s <= config.heartbeat_interval_s:
        raise ConfigError("PARSEQ_HEARTBEAT_TIMEOUT_S must be > PARSEQ_HEARTBEAT_INTERVAL_S")
    if config.upload_attempts < 1:
        raise ConfigError("PARSEQ_UPLOAD_ATTEMPTS must be >= 1")
    if config.max_wait_s < 0:
        raise ConfigError("PARSEQ_MAX_WAIT_S must be >= 0")


def _check_workers(config: Config) -> None:
    """Worker processes, the scheduler, the broker and migrations."""
    if config.worker_heartbeat_interval_s <= 0:
        raise ConfigError("PARSEQ_WORKER_HEARTBEAT_INTERVAL_S must be > 0")
    prune_s = config.worker_prune_after_s
    if prune_s and prune_s <= config.worker_heartbeat_interval_s:
        raise ConfigError(
            "PARSEQ_WORKER_PRUNE_AFTER_S must be 0 (never) or > PARSEQ_WORKER_HEARTBEAT_INTERVAL_S"
        )
    if config.worker_threads < 1:
        raise ConfigError("PARSEQ_WORKER_THREADS must be >= 1")
    if config.env_installer not in ("auto", "uv", "pip"):
        raise ConfigError("PARSEQ_ENV_INSTALLER must be auto, uv or pip")
    for name in (
        "scheduler_sync_interval_s",
        "sweep_interval_s",
        "broker_consumer_timeout_s",
        "migration_lock_timeout_s",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"PARSEQ_{name.upper()} must be > 0")
    if config.schedule_grace_s < 0:
        raise ConfigError("PARSEQ_SCHEDULE_GRACE_S must be >= 0")


def _check_web(config: Config) -> None:
    """The session, login-throttle and proxy settings."""
    for name in ("session_max_age_s", "session_idle_timeout_s", "login_failure_window_s"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"PARSEQ_{name.upper()} must be > 0")
    if config.login_max_failures < 1:
        raise ConfigError("PARSEQ_LOGIN_MAX_FAILURES must be >= 1")
    if config.trusted_proxy_count < 0:
        raise ConfigError("PARSEQ_TRUSTED_PROXY_COUNT must be >= 0")
    if not config.throttle_storage_url.startswith(THROTTLE_STORAGE_SCHEMES):
        raise ConfigError(
            "PARSEQ_THROTTLE_STORAGE_URL must start with " + ", ".join(THROTTLE_STORAGE_SCHEMES)
        )


def _check_notify(config: Config) -> None:
    """Notifications and the metrics endpoint."""
    if config.notify_webhook_url and not config.notify_webhook_url.startswith(
        ("http://", "https://")
    ):
        raise ConfigError("PARSEQ_NOTIFY_WEBHOOK_URL must be an http:// or https:// URL")
    if config.notify_webhook_format not in ("json", "slack"):
        raise ConfigError("PARSEQ_NOTIFY_WEBHOOK_FORMAT must be json or slack")
    if config.smtp_security not in ("starttls", "ssl", "none"):
        raise ConfigError("PARSEQ_SMTP_SECURITY must be starttls, ssl or none")
    for network in config.metrics_networks.split(","):
        try:
            ipaddress.ip_network(network.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                f"PARSEQ_METRICS_NETWORKS: {network.strip()!r} is not a network (CIDR)"
            ) from None
    if config.notify_attempts < 1:
        raise ConfigError("PARSEQ_NOTIFY_ATTEMPTS must be >= 1")


def _check_sandbox(config: Config) -> None:
    """Fork servers and the parsers' uids."""
    if config.fork_servers < 0:
        raise ConfigError("PARSEQ_FORK_SERVERS must be >= 0 (0 = off)")
    if config.run_as_uid_base and not MIN_UID_BASE <= config.run_as_uid_base <= MAX_UID_BASE:
        raise ConfigError(
            f"PARSEQ_RUN_AS_UID_BASE must be 0 (off) or between {MIN_UID_BASE} and "
            f"{MAX_UID_BASE}: above the machine's users, with room for every parser id"
        )
