"""Web hardening: security headers, cookie flags, no debug mode, bandit-clean code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask, session

from parseq.app import SECURITY_HEADERS, create_app
from tests.conftest import add_parser, admin_client, api_client

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


def test_downloaded_files_are_attachments_and_never_sniffed(sqlite_app: Flask) -> None:
    from parseq import runs

    run = runs.run_now(add_parser("echo", "echo_env.py"))
    resp = api_client(sqlite_app).get(f"/api/v1/runs/{run.id}/files/report.json")
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_session_cookie_is_httponly_and_samesite_lax(sqlite_app: Flask) -> None:
    @sqlite_app.get("/_test_session")
    def _set() -> str:
        session["x"] = 1
        return "ok"

    resp = sqlite_app.test_client().get("/_test_session")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP by default; PARSEQ_SECURE_COOKIES turns it on


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
