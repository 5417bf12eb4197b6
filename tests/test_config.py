"""Settings come from PARSEQ_* variables with typed defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from parseq.core.config import Config
from parseq.core.errors import ConfigError


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    config = Config.from_env(environ={"PARSEQ_VAR_DIR": str(tmp_path)})
    assert config.broker_url == "memory://"
    assert config.database_url == f"sqlite:///{tmp_path / 'parseq.db'}"
    assert config.storage_url == (tmp_path / "storage").as_uri()
    assert config.runs_dir == tmp_path / "runs"


def test_values_are_read_and_typed() -> None:
    config = Config.from_env(
        environ={
            "PARSEQ_DATABASE_URL": "postgresql://u@h/db",
            "PARSEQ_DEFAULT_TIMEOUT_S": "2.5",
            "PARSEQ_WORKER_THREADS": "4",
            "PARSEQ_KEEP_WORKDIRS": "yes",
            "PARSEQ_PARSERS_DIR": "/srv/parsers",
        }
    )
    assert config.database_url == "postgresql+psycopg2://u@h/db"
    assert config.default_timeout_s == 2.5
    assert config.worker_threads == 4
    assert config.keep_workdirs is True
    assert config.parsers_dir == Path("/srv/parsers")


def test_only_path_and_locale_reach_child_processes() -> None:
    config = Config.from_env(
        environ={"PATH": "/bin", "LANG": "C", "LC_ALL": "C", "PARSEQ_SECRET_KEY": "k", "X": "1"}
    )
    assert config.child_env == {"PATH": "/bin", "LANG": "C", "LC_ALL": "C"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PARSEQ_WORKER_THREADS", "many"),
        ("PARSEQ_WORKER_THREADS", "0"),
        ("PARSEQ_DEFAULT_TIMEOUT_S", "-1"),
        ("PARSEQ_KEEP_WORKDIRS", "maybe"),
        ("PARSEQ_BROKER_CONSUMER_TIMEOUT_S", "0"),
        ("PARSEQ_RUN_AS_UID_BASE", "500"),
        ("PARSEQ_RUN_AS_UID_BASE", "lots"),
        ("PARSEQ_FORK_SERVERS", "-1"),
        ("PARSEQ_FORK_SERVERS", "some"),
        ("PARSEQ_NOTIFY_WEBHOOK_URL", "file:///etc/passwd"),
        ("PARSEQ_NOTIFY_WEBHOOK_FORMAT", "xml"),
        ("PARSEQ_NOTIFY_ATTEMPTS", "0"),
        ("PARSEQ_SMTP_SECURITY", "tls"),
        ("PARSEQ_METRICS_NETWORKS", "10.0.0.0/8,not-a-network"),
    ],
)
def test_bad_values_raise_a_clear_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match="PARSEQ_"):
        Config.from_env(environ={name: value})
