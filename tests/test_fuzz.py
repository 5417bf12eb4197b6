"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis): no 5xx,
and every response matches what the document says. Bounded examples keep it quick."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from parseq.core.config import Config
from parseq.db.models import db
from parseq.services.tokens import create_token
from parseq.web.api.openapi import document
from parseq.web.app import create_app, init_db
from parseq.worker import execution
from tests.conftest import add_parser

MAX_EXAMPLES = 25


@pytest.fixture
def fuzz_app(make_config: Callable[..., Config]) -> Flask:
    app = create_app(make_config(max_wait_s=0.2))
    init_db(app)
    with app.app_context():
        execution.run_now(add_parser("items", "items.py"), {"blob_bytes": 1000})
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def token(fuzz_app: Flask) -> str:
    with fuzz_app.app_context():
        return create_token("fuzz")[1]


# Built from the document itself (the lazy fixture loader does not work with pytest 9); each
# case is sent to the fixture's app in-process through the WSGI transport.
schema = schemathesis.openapi.from_dict(document(max_wait_s=0.2))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case, fuzz_app: Flask, token: str) -> None:  # type: ignore[no-untyped-def]
    case.operation.schema.app = fuzz_app
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"},
        app=fuzz_app,
        # Some rules are not in the schema: a path must end in .py or .ipynb by kind, a name
        # must be free. Those answers are 4xx by design, so only wrong 4xx on bad data counts.
        excluded_checks=[positive_data_acceptance],
    )
