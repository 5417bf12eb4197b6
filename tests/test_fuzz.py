"""Property-based testing of the REST API from its generated OpenAPI document (schemathesis),
with every built-in check: no 5xx, documented status codes, content types, headers and
response schemas, valid data accepted, invalid data refused, auth not ignored, unsupported
methods refused. A fixed seed and a bounded number of examples per operation keep it
repeatable and quick."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from parseq.core.config import Config
from parseq.db.models import db
from parseq.services.tokens import create_token
from parseq.web.app import create_app, init_db
from parseq.worker import execution
from tests.conftest import add_parser

SEED = 23
MAX_EXAMPLES = 30
MAX_WAIT_S = 0.2

load_all_checks()
ALL_CHECKS = CHECKS.get_all()

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "checks": {
            # Valid by the schema but refused by state or the machine, by design: a path must
            # name an existing file (422), a name must be free and a cancelled run be active
            # (409), a run or file may not exist (404), a Range may lie past the end (416).
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "416", "422"]
            },
        },
    }
)


def _app(make_config: Callable[..., Config]) -> Flask:
    # ignored_auth sends bad tokens on purpose: no lock-out (tested in test_tokens) here.
    app = create_app(make_config(max_wait_s=MAX_WAIT_S, login_max_failures=10**6))
    init_db(app)
    with app.app_context():
        parser = add_parser("items", "items.py")
        execution.run_now(parser, {"blob_bytes": 1000})
    return app


@pytest.fixture
def fuzz_app(make_config: Callable[..., Config]) -> Iterator[Flask]:
    app = _app(make_config)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def token(fuzz_app: Flask) -> str:
    with fuzz_app.app_context():
        return create_token("fuzz")[1]


def _document() -> dict:
    """The document as the app serves it (its ``wait`` maximum is MAX_WAIT_S)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.from_env({"PARSEQ_VAR_DIR": tmp}, max_wait_s=MAX_WAIT_S)
        return create_app(config).test_client().get("/api/v1/openapi.json").json


schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case, fuzz_app: Flask, token: str) -> None:  # type: ignore[no-untyped-def]
    case.operation.schema.app = fuzz_app
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"}, app=fuzz_app, checks=ALL_CHECKS
    )
