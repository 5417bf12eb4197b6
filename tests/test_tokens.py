"""API tokens: stored hashed, shown once, revocable, read-only; the CLI and the admin page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

from parseq.db.models import db
from parseq.db.tokens import ApiToken
from parseq.services.tokens import create_token, hash_token
from tests.conftest import add_parser, admin_client, api_client
from tests.test_cli import _env, _parseq


@pytest.fixture
def app(sqlite_app: Flask) -> Flask:
    add_parser("echo", "echo_env.py")
    return sqlite_app


def _bearer(plain: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plain}"}


def test_token_is_stored_as_its_sha256_only(app: Flask) -> None:
    token, plain = create_token("ci")
    assert plain.startswith("pq_") and len(plain) > 40
    assert token.token_hash == hash_token(plain)
    row = db.session.execute(db.text("SELECT * FROM api_tokens")).mappings().one()
    assert plain not in str(dict(row))
    assert token.last_used_at is None


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer pq_not-a-real-token", "pq_x"],
)
def test_requests_without_a_valid_token_get_401_json(app: Flask, header: str | None) -> None:
    client = api_client(app, auth=False)
    headers = {} if header is None else {"Authorization": header}
    resp = client.get("/api/v1/parsers", headers=headers)
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "unauthorized"


def test_valid_token_works_and_records_last_use(app: Flask) -> None:
    token, plain = create_token("reader")
    resp = api_client(app, auth=False).get("/api/v1/parsers", headers=_bearer(plain))
    assert resp.status_code == 200
    db.session.expire_all()
    assert db.session.get(ApiToken, token.id).last_used_at is not None


def test_revoked_token_is_refused(app: Flask) -> None:
    from parseq.services.tokens import revoke_token

    _token, plain = create_token("old")
    client = api_client(app, auth=False)
    assert client.get("/api/v1/parsers", headers=_bearer(plain)).status_code == 200
    revoke_token("old")
    resp = client.get("/api/v1/parsers", headers=_bearer(plain))
    assert resp.status_code == 401


def test_read_only_token_reads_but_cannot_write(app: Flask) -> None:
    client = api_client(app, read_only=True)
    assert client.get("/api/v1/parsers/echo").status_code == 200
    for method, url in [
        ("post", "/api/v1/parsers/echo/runs"),
        ("post", "/api/v1/parsers/echo/disable"),
        ("patch", "/api/v1/parsers/echo"),
        ("delete", "/api/v1/parsers/echo"),
        ("post", "/api/v1/parsers"),
        ("post", "/api/v1/runs/1/cancel"),
    ]:
        resp = getattr(client, method)(url, json={})
        assert resp.status_code == 403, (method, url)
        assert resp.json["error"]["code"] == "forbidden"


@pytest.mark.parametrize("url", ["/api/v1/health", "/api/v1/openapi.json", "/api/v1/docs"])
def test_health_and_documents_need_no_token(app: Flask, url: str) -> None:
    assert api_client(app, auth=False).get(url).status_code == 200


def test_duplicate_or_bad_token_names_are_refused(app: Flask) -> None:
    from parseq.core.errors import Conflict, ValidationError

    create_token("twice")
    with pytest.raises(Conflict):
        create_token("twice")
    with pytest.raises(ValidationError):
        create_token("Bad Name")


def test_cli_creates_prints_once_and_revokes(tmp_path: Path) -> None:
    env = _env(tmp_path)
    created = _parseq("create-token", "--read-only", "robot", env=env)
    assert created.returncode == 0, created.stderr
    plain = created.stdout.strip()
    assert re.fullmatch(r"pq_[A-Za-z0-9_-]{43}", plain)
    assert "read-only token 'robot' created" in created.stderr

    again = _parseq("create-token", "robot", env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == "parseq: error: a token named 'robot' exists already"

    revoked = _parseq("revoke-token", "robot", env=env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    unknown = _parseq("revoke-token", "nobody", env=env)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "parseq: error: no token named 'nobody'"

    from parseq.core.config import Config
    from parseq.web.app import create_app

    app = create_app(Config.from_env(environ=env))
    with app.app_context():
        token = db.session.execute(db.select(ApiToken)).scalar_one()
        assert token.read_only and token.revoked
        assert token.token_hash == hash_token(plain)
        resp = api_client(app, auth=False).get("/api/v1/parsers", headers=_bearer(plain))
        assert resp.status_code == 401
        db.engine.dispose()


def test_admin_creates_a_token_and_shows_it_once(app: Flask) -> None:
    admin = admin_client(app)
    resp = admin.post(
        "/admin/tokens/new/",
        data={"name": "from-admin", "read_only": "y", "csrf_token": admin.csrf_token},
        follow_redirects=True,
    )
    assert resp.status_code == 200
    page = resp.data.decode()
    shown = re.search(r"<code>(pq_[A-Za-z0-9_-]{43})</code>", page)
    assert shown, page
    plain = shown.group(1)
    token = db.session.execute(db.select(ApiToken).filter_by(name="from-admin")).scalar_one()
    assert token.read_only and token.token_hash == hash_token(plain)
    listing = admin.get("/admin/tokens/").data.decode()
    assert "from-admin" in listing and plain not in listing

    client = api_client(app, auth=False)
    assert client.get("/api/v1/parsers", headers=_bearer(plain)).status_code == 200
    assert client.post("/api/v1/parsers/echo/runs", headers=_bearer(plain)).status_code == 403


def test_admin_refuses_a_bad_token_name(app: Flask) -> None:
    admin = admin_client(app)
    resp = admin.post(
        "/admin/tokens/new/",
        data={"name": "Not Valid", "csrf_token": admin.csrf_token},
        follow_redirects=True,
    )
    assert "lowercase letters" in resp.data.decode()
    assert db.session.execute(db.select(ApiToken).filter_by(name="Not Valid")).first() is None
