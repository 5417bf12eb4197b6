"""The docker-compose deployment, checked without a container engine (none runs here).

The file is validated against the Compose Specification's JSON schema (tests/fixtures/
compose_spec.json, as shipped in docker-compose 1.29.2's wheel), and every PARSEQ_* variable
it sets must be a real setting of parseq.core.config.Config.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from parseq.cli.main import main as cli
from parseq.core.config import Config
from parseq.core.config_checks import MIN_UID_BASE
from parseq.sandbox import procs

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {f"PARSEQ_{f.name.upper()}" for f in dataclasses.fields(Config)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_specification(compose: dict) -> None:
    schema = json.loads((REPO / "tests" / "fixtures" / "compose_spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)


def test_every_parseq_variable_is_a_real_setting(compose: dict) -> None:
    used = set()
    for service in compose["services"].values():
        used |= {k for k in service.get("environment", {}) if k.startswith("PARSEQ_")}
    for line in (REPO / ".env.example").read_text().splitlines():
        name = line.split("=", 1)[0].strip()
        if name.startswith("PARSEQ_"):
            used.add(name)
    assert used, "compose sets no PARSEQ_ variable"
    assert used - SETTINGS == set()


def test_compose_runs_the_three_processes_and_their_dependencies(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "rabbitmq", "minio", "web", "worker", "scheduler"} <= set(services)
    for name in ("web", "worker", "scheduler"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["rabbitmq"]["condition"] == "service_healthy"
        assert deps["createbucket"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "rabbitmq", "minio"):
        assert "test" in services[name]["healthcheck"]
    assert "ports" not in services["worker"]  # scalable: --scale worker=N


def test_compose_commands_are_real_parseq_commands(compose: dict) -> None:
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if command and command[0] == "parseq":
            assert command[1] in cli.commands, f"{name}: unknown command parseq {command[1]}"


def _rabbitmq_conf(compose: dict) -> dict[str, str]:
    """The settings of the RabbitMQ config files the compose file mounts (key = value lines)."""
    settings: dict[str, str] = {}
    for volume in compose["services"]["rabbitmq"].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(".") and target.startswith("/etc/rabbitmq/"):
            for line in (REPO / source).read_text().splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    key, value = line.split("=", 1)
                    settings[key.strip()] = value.strip()
    return settings


def test_rabbitmq_consumer_timeout_exceeds_the_default_run_timeout(compose: dict) -> None:
    """RabbitMQ closes the channel of a worker whose run outlasts consumer_timeout (30 min by
    default); the deployment sets it well above the default run timeout."""
    settings = _rabbitmq_conf(compose)
    assert "consumer_timeout" in settings, "compose mounts no RabbitMQ consumer_timeout"
    consumer_timeout_s = int(settings["consumer_timeout"]) / 1000
    assert consumer_timeout_s > 2 * Config().default_timeout_s
    # ... and tells the workers, so they do not warn about it.
    told = compose["x-parseq"]["environment"]["PARSEQ_BROKER_CONSUMER_TIMEOUT_S"]
    assert float(told) == consumer_timeout_s


def test_the_worker_gets_the_full_sandbox_and_the_other_processes_stay_unprivileged(
    compose: dict,
) -> None:
    """Only a worker that can switch users gives parsers users of their own (a non-root one
    refuses to start): root in its container, with no capability beyond those it needs, no
    new privileges for parsers (setuid programs), and a uid per parser."""
    services = compose["services"]
    worker = services["worker"]
    assert str(worker["user"]).split(":")[0] in ("0", "root")
    assert worker["cap_drop"] == ["ALL"]
    assert {c.lower() for c in worker["cap_add"]} == set(procs.SWITCH_CAPS)
    assert "no-new-privileges:true" in worker["security_opt"]
    assert int(worker["environment"]["PARSEQ_RUN_AS_UID_BASE"]) >= MIN_UID_BASE
    # The rest of the shared environment is still there (merged, not replaced).
    assert set(compose["x-parseq"]["environment"]) < set(worker["environment"])
    for name in ("web", "scheduler", "init"):
        assert "user" not in services[name]
    assert "\nUSER parseq\n" in (REPO / "Dockerfile").read_text()
