"""A parser's notification settings over the API and in the admin form (the same checks, a
422 / a form error for bad values), the admin's trends chart."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from parseq.db.models import Parser, db
from parseq.services import runs
from parseq.worker import execution
from tests.conftest import add_parser, admin_client, api_client

HOOK = "https://hooks.example.org/services/T000/B000/very-secret-path"


@pytest.fixture
def app(sqlite_app: Flask) -> Iterator[Flask]:
    add_parser("site", "items.py")
    yield sqlite_app


def _parser(name: str) -> Parser:
    db.session.expire_all()
    return db.session.execute(db.select(Parser).filter_by(name=name)).scalar_one()


def test_api_sets_shows_and_removes_notification_settings(app: Flask) -> None:
    client = api_client(app)
    body = {
        "notifications": {
            "events": ["error", "empty"],
            "webhook_url": HOOK,
            "webhook_secret": "sign-me",
            "webhook_format": "slack",
            "email_to": ["ops@example.org"],
            "slow_after_s": 60,
        }
    }
    resp = client.patch("/api/v1/parsers/site", json=body)
    assert resp.status_code == 200, resp.json
    shown = resp.json["notifications"]
    assert shown == {
        "events": ["error", "empty"],
        "webhook_format": "slack",
        "email_to": ["ops@example.org"],
        "slow_after_s": 60.0,
        "webhook": "https://hooks.example.org/…",
        "webhook_secret_set": True,
    }
    assert "very-secret-path" not in json.dumps(resp.json) and "sign-me" not in resp.text
    assert _parser("site").notifications["webhook_url"] == HOOK

    # A partial update merges; a null falls back to the default.
    resp = client.patch("/api/v1/parsers/site", json={"notifications": {"webhook_url": None}})
    assert resp.json["notifications"]["webhook"] is None
    assert resp.json["notifications"]["events"] == ["error", "empty"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"events": ["boom"]}, "unknown event(s) boom"),
        ({"webhook_url": "file:///etc/passwd"}, "http:// or https://"),
        ({"webhook_format": "xml"}, "json or slack"),
        ({"email_to": ["not an address"]}, "is not an e-mail address"),
        ({"slow_after_s": -1}, "from 0 to"),
        ({"nope": 1}, "unknown notification setting(s): nope"),
        ("all", "must be an object"),
    ],
)
def test_api_refuses_bad_settings(app: Flask, settings: object, message: str) -> None:
    resp = api_client(app).patch("/api/v1/parsers/site", json={"notifications": settings})
    assert resp.status_code == 422, resp.json
    assert message in resp.json["error"]["fields"]["notifications"]
    assert _parser("site").notifications in (None, {})


def _form(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "site",
        "description": "",
        "script": "script:items.py",
        "requirements": "",
        "default_args": "{}",
        "max_retries": "0",
        "enabled": "y",
    }
    data.update(overrides)
    return data


def _post(client: FlaskClient, url: str, data: dict[str, object]) -> object:
    return client.post(url, data={**data, "csrf_token": client.csrf_token})  # type: ignore[attr-defined]


def test_admin_form_sets_notification_settings(app: Flask) -> None:
    client = admin_client(app)
    parser_id = _parser("site").id
    url = f"/admin/parsers/edit/?id={parser_id}"
    resp = _post(
        client,
        url,
        _form(
            notify_events="error, slow",
            notify_webhook_url=HOOK,
            notify_webhook_format="json",
            notify_email_to="a@example.org, b@example.org",
            notify_email_digest_s="600",
        ),
    )
    assert resp.status_code == 302, resp.data.decode()[-1500:]
    assert _parser("site").notifications == {
        "events": ["error", "slow"],
        "webhook_url": HOOK,
        "webhook_format": "json",
        "email_to": ["a@example.org", "b@example.org"],
        "email_digest_s": 600.0,
    }
    page = client.get(url).data.decode()
    assert "very-secret-path" not in page and "https://hooks.example.org/…" in page
    assert 'value="error, slow"' in page

    # Saved again with the URL field empty: the webhook is kept.
    resp = _post(client, url, _form(notify_events="error"))
    assert _parser("site").notifications["webhook_url"] == HOOK

    resp = _post(client, url, _form(notify_events="error, typo"))
    assert resp.status_code == 200
    assert "unknown event(s) typo" in resp.data.decode()
    assert _parser("site").notifications["events"] == ["error"]

    _post(client, url, _form(notify_events="none", notify_webhook_remove="y"))
    assert _parser("site").notifications == {"events": []}


def test_parser_page_charts_recent_runs(app: Flask) -> None:
    parser = _parser("site")
    for _ in range(3):
        run = runs.create_run(parser, enqueue=False)
        execution.execute_run(run.id, retry=False)
    page = admin_client(app).get(f"/admin/parsers/details/?id={parser.id}").data.decode()
    assert 'id="parser-trends"' in page
    assert page.count("<rect") == 6  # a duration and a result-size bar per run
    assert "bytes of results" in page and 'id="notify-test"' in page
