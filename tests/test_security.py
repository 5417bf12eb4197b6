"""Web hardening: security headers, cookie flags, no debug mode, bandit-clean code."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from flask import Flask, session

from parseq.core.config import Config
from parseq.db.models import RunFile, db
from parseq.web.app import create_app, init_db
from parseq.web.headers import SECURITY_HEADERS
from tests.conftest import add_parser, admin_client, api_client, web_client

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "path",
    ["/api/v1/parsers", "/api/v1/parsers/nope", "/api/v1/health", "/admin/", "/nowhere"],
)
def test_every_response_carries_the_security_headers(sqlite_app: Flask, path: str) -> None:
    client = admin_client(sqlite_app) if path.startswith("/admin") else api_client(sqlite_app)
    resp = client.get(path)
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert set(SECURITY_HEADERS) <= set(resp.headers.keys())
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "object-src 'none'" in csp
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in _directive(csp, "script-src")


def _directive(csp: str, name: str) -> str:
    return next(d for d in csp.split("; ") if d.startswith(name + " "))


NONCE_RE = re.compile(r"'nonce-([A-Za-z0-9_-]+)'")


@pytest.mark.parametrize(
    "path",
    ["/admin/", "/admin/parsers/", "/admin/parsers/new/", "/admin/runs/", "/api/v1/docs"],
)
def test_every_script_on_a_page_carries_the_nonce_its_policy_names(
    sqlite_app: Flask, path: str
) -> None:
    add_parser("echo", "echo_env.py")
    client = admin_client(sqlite_app)
    first, second = client.get(path), client.get(path)
    assert first.status_code == 200
    nonce = NONCE_RE.search(_directive(first.headers["Content-Security-Policy"], "script-src"))
    assert nonce, first.headers["Content-Security-Policy"]
    scripts = re.findall(r"<script\b[^>]*>", first.get_data(as_text=True))
    assert scripts
    assert all(f'nonce="{nonce.group(1)}"' in tag for tag in scripts), scripts
    assert nonce.group(1) not in second.headers["Content-Security-Policy"]  # new each time


@pytest.mark.parametrize(
    "path",
    ["/admin/parsers/", "/admin/runs/", "/admin/skips/", "/admin/tokens/", "/admin/parsers/new/"],
)
def test_every_inline_event_handler_is_one_the_policy_hashes(sqlite_app: Flask, path: str) -> None:
    """A new list action (or Flask-Admin release) with a handler of its own would be blocked
    by the browser: it must be added to ``headers.INLINE_HANDLERS``."""
    from html import unescape

    from parseq.web.headers import INLINE_HANDLERS

    add_parser("echo", "echo_env.py")
    html = admin_client(sqlite_app).get(path).get_data(as_text=True)
    handlers = {unescape(h) for h in re.findall(r'\son[a-z]+="([^"]*)"', html)}
    assert handlers <= set(INLINE_HANDLERS), handlers - set(INLINE_HANDLERS)


def test_hsts_and_secure_cookies_follow_https(sqlite_app: Flask) -> None:
    plain = admin_client(sqlite_app).get("/admin/")
    assert "Strict-Transport-Security" not in plain.headers

    resp = web_client(sqlite_app).get("/admin/login/", base_url="https://parseq.example")
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Secure" in resp.headers["Set-Cookie"]
    # A forwarded header counts only behind a proxy the settings trust.
    spoofed = web_client(sqlite_app).get("/admin/login/", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in spoofed.headers
    assert "Secure" not in spoofed.headers["Set-Cookie"]


def test_a_trusted_proxy_says_when_the_request_was_https(
    make_config: Callable[..., Config],
) -> None:
    app = create_app(make_config(trusted_proxy_count=1))
    init_db(app)
    client = app.test_client()
    resp = client.get(
        "/admin/login/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.1.2.3"}
    )
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Secure" in resp.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in client.get("/admin/login/").headers


def test_file_names_cannot_break_or_escape_content_disposition(sqlite_app: Flask) -> None:
    from parseq.web import files
    from parseq.worker import execution

    run = execution.run_now(add_parser("echo", "echo_env.py"))
    stored = db.session.execute(
        db.select(RunFile).filter_by(run_id=run.id, name="report.json")
    ).scalar_one()
    client = api_client(sqlite_app)
    # Names a parser may write on Linux; CR as in rows stored before uploads refused it.
    for name in ('back\\slash "q".json', "carriage\rreturn.json"):
        stored.name = name
        db.session.commit()
        resp = client.get(f"/api/v1/runs/{run.id}/files/{quote(name)}")
        assert resp.status_code == 200, resp.data
        assert resp.data.startswith(b"{")  # the file's bytes (and the stream is closed)
        _assert_disposition(resp.headers["Content-Disposition"], name)
    # A line feed cannot even be routed to (a URL path holds no newline); the header alone.
    stored.name = "line\r\nfeed.json"
    with sqlite_app.test_request_context("/"):
        resp = files.serve(stored)
        resp.close()
    _assert_disposition(resp.headers["Content-Disposition"], stored.name)
    db.session.rollback()


def _assert_disposition(header: str, name: str) -> None:
    """A quoted ASCII fallback with nothing that ends or escapes it, then the exact name."""
    match = re.fullmatch(r'attachment; filename="([^"\\\x00-\x1f\x7f]*)"; (.*)', header)
    assert match, header
    assert match.group(2) == "filename*=UTF-8''" + quote(name, safe="")


def test_session_cookie_is_httponly_and_samesite_lax(sqlite_app: Flask) -> None:
    @sqlite_app.get("/_test_session")
    def _set() -> str:
        session["x"] = 1
        return "ok"

    resp = sqlite_app.test_client().get("/_test_session")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP; HTTPS or PARSEQ_SECURE_COOKIES turn it on


def test_secure_cookies_setting(make_config) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_config(secure_cookies=True))
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["REMEMBER_COOKIE_SECURE"] is True


def test_debug_mode_is_off_even_with_flask_debug_set(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = create_app(make_config())
    assert app.debug is False
    resp = app.test_client().get("/api/v1/runs/abc/nothing")
    assert b"Traceback" not in resp.data and b"Werkzeug Debugger" not in resp.data


def test_bandit_finds_nothing_in_parseq() -> None:
    bandit = str(Path(sys.executable).parent / "bandit")
    result = subprocess.run(
        [bandit, "-q", "-r", str(ROOT / "parseq")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
