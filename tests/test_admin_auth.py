"""Admin sign-in security (issue 25): redirect targets stay on the site, sessions end on the
server (logout, log out everywhere, password reset, idle and absolute timeouts), and failed
logins and API tokens are throttled."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from parseq.core.config import Config
from parseq.db.models import Parser, db
from parseq.services.sessions import AdminSession
from parseq.web.admin.auth import safe_path
from parseq.web.app import create_app, init_db
from tests.conftest import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    add_parser,
    admin_client,
    api_client,
    csrf_from,
    web_client,
)

OFF_SITE = [
    "////evil.example/",
    "///evil.example/",
    "//evil.example/",
    "/\t/evil.example/",
    "/\n/evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "https://evil.example/",
    "javascript:alert(1)",
    " /evil",
    "evil.example",
    "//[evil",
]


@pytest.fixture
def app(sqlite_app: Flask) -> Flask:
    add_parser("echo", "echo_env.py")
    return sqlite_app


def _login(app: Flask, password: str = ADMIN_PASSWORD, address: str = "127.0.0.1", **kw):  # type: ignore[no-untyped-def]
    """POST the login form from a fresh client at ``address``; the response and the client."""
    client = web_client(app)
    client.environ_base["REMOTE_ADDR"] = address
    token = csrf_from(client.get("/admin/login/").data)
    resp = client.post(
        "/admin/login/",
        data={
            "username": kw.pop("username", ADMIN_USER),
            "password": password,
            "csrf_token": token,
        },
        **kw,
    )
    return resp, client


def _enabled(name: str = "echo") -> bool:
    db.session.expire_all()
    return db.session.execute(db.select(Parser.enabled).filter_by(name=name)).scalar_one()


# --- redirect targets ----------------------------------------------------------------------


@pytest.mark.parametrize("target", OFF_SITE)
def test_safe_path_refuses_every_off_site_spelling(target: str) -> None:
    assert safe_path(target) is None


@pytest.mark.parametrize(
    "target", ["/admin/", "/admin/runs/?page=2&sort=1", "/a%2F%2Fb", "/[x", "/é?q=ü"]
)
def test_safe_path_keeps_paths_on_the_site(target: str) -> None:
    assert safe_path(target) == target


@pytest.mark.parametrize("target", OFF_SITE)
def test_login_never_redirects_off_site(app: Flask, target: str) -> None:
    admin_client(app)  # makes the user
    resp, _ = _login(app, query_string={"next": target})
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/admin/"


@pytest.mark.parametrize("target", OFF_SITE)
def test_the_toggle_refuses_an_off_site_return_url(app: Flask, target: str) -> None:
    client = admin_client(app)
    resp = client.post(
        "/admin/parsers/toggle/1", data={"csrf_token": client.csrf_token, "url": target}
    )
    assert resp.status_code == 400
    assert _enabled()  # refused before the view ran


def test_the_toggle_returns_to_a_path_on_the_site(app: Flask) -> None:
    client = admin_client(app)
    resp = client.post(
        "/admin/parsers/toggle/1",
        data={"csrf_token": client.csrf_token, "url": "/admin/parsers/?page=0"},
    )
    assert resp.headers["Location"] == "/admin/parsers/?page=0"
    assert not _enabled()


@pytest.mark.parametrize("target", ["////evil.example/", "javascript:alert(1)", "/\t/evil"])
def test_flask_admin_views_refuse_an_off_site_url_parameter(app: Flask, target: str) -> None:
    client = admin_client(app)
    assert (
        client.get("/admin/parsers/edit/", query_string={"id": 1, "url": target}).status_code == 400
    )
    resp = client.post(
        "/admin/parsers/action/",
        query_string={"url": target},
        data={"csrf_token": client.csrf_token, "action": "disable", "rowid": "1"},
    )
    assert resp.status_code == 400
    assert _enabled()


# --- sessions end on the server --------------------------------------------------------------


def _replay(app: Flask, client: FlaskClient) -> FlaskClient:
    """A new client holding a copy of ``client``'s cookies, as a thief would."""
    thief = web_client(app)
    for cookie in client._cookies.values():  # type: ignore[attr-defined]
        thief.set_cookie(cookie.key, cookie.value, domain=cookie.domain, path=cookie.path)
    return thief


def test_a_cookie_copied_before_logout_opens_nothing_after_it(app: Flask) -> None:
    client = admin_client(app)
    thief = _replay(app, client)
    assert thief.get("/admin/").status_code == 200  # the copy works while the session lives

    assert (
        client.post("/admin/login/logout", data={"csrf_token": client.csrf_token}).status_code
        == 302
    )

    assert thief.get("/admin/").status_code == 302
    resp = thief.post(
        "/admin/parsers/toggle/1", data={"csrf_token": client.csrf_token, "url": "/admin/"}
    )
    assert resp.status_code == 302 and "/admin/login/" in resp.headers["Location"]
    assert _enabled()
    assert db.session.execute(db.select(db.func.count()).select_from(AdminSession)).scalar() == 0


def test_logout_ends_only_this_browsers_session(app: Flask) -> None:
    first, second = admin_client(app), admin_client(app)
    first.post("/admin/login/logout", data={"csrf_token": first.csrf_token})
    assert first.get("/admin/").status_code == 302
    assert second.get("/admin/").status_code == 200


def test_log_out_everywhere_ends_every_session_of_the_user(app: Flask) -> None:
    first, second = admin_client(app), admin_client(app)
    page = first.get("/admin/").data
    assert b'id="logout-everywhere"' in page
    resp = first.post("/admin/login/logout-everywhere", data={"csrf_token": first.csrf_token})
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/login/"
    assert first.get("/admin/").status_code == 302
    assert second.get("/admin/").status_code == 302


def test_a_password_reset_from_the_cli_ends_every_session(app: Flask) -> None:
    client = admin_client(app)
    thief = _replay(app, client)
    config = app.extensions["parseq"].config
    env = {"PATH": os.environ["PATH"], "PARSEQ_VAR_DIR": str(config.var_dir)}
    env["PARSEQ_LOG_LEVEL"] = "WARNING"
    new_pw = ("--password", "a-brand-new-password")
    reset = subprocess.run(
        [sys.executable, "-m", "parseq.cli", "create-user", ADMIN_USER, "--reset", *new_pw],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert reset.returncode == 0, reset.stderr
    assert client.get("/admin/").status_code == 302
    assert thief.get("/admin/").status_code == 302
    assert _login(app, "a-brand-new-password")[0].status_code == 302


@pytest.mark.parametrize(
    ("column", "age"),
    [
        ("last_seen_at", timedelta(hours=1, seconds=5)),
        ("created_at", timedelta(hours=12, seconds=5)),
    ],
)
def test_sessions_end_after_the_idle_timeout_and_the_absolute_lifetime(
    app: Flask, column: str, age: timedelta
) -> None:
    """Defaults: 1 h without a request, 12 h after login (the row is aged, not the clock)."""
    client = admin_client(app)
    row = db.session.execute(db.select(AdminSession)).scalar_one()
    setattr(row, column, getattr(row, column) - age)
    db.session.commit()
    assert client.get("/admin/").status_code == 302
    assert db.session.execute(db.select(AdminSession)).first() is None


def test_a_used_session_is_kept_alive(app: Flask) -> None:
    client = admin_client(app)
    row = db.session.execute(db.select(AdminSession)).scalar_one()
    row.last_seen_at -= timedelta(minutes=50)
    db.session.commit()
    assert client.get("/admin/").status_code == 200
    db.session.expire_all()
    assert db.session.execute(db.select(AdminSession)).scalar_one().last_seen_at > (
        row.created_at - timedelta(seconds=1)
    )


# --- failed logins are throttled -------------------------------------------------------------


@pytest.fixture
def quick_app(make_config: Callable[..., Config]) -> Flask:
    """An app whose failure window is 3 failures in 2 seconds."""
    app = create_app(make_config(login_max_failures=3, login_failure_window_s=2))
    init_db(app)
    with app.app_context():
        add_parser("echo", "echo_env.py")
        yield app
        db.engine.dispose()


def test_ten_failed_logins_lock_the_username_even_for_the_right_password(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    admin_client(app)
    caplog.set_level(logging.WARNING, logger="parseq.web.admin.auth")
    for i in range(10):
        # From a new address each time: the username alone is throttled.
        resp, _ = _login(app, "wrong-password", address=f"10.0.0.{i}")
        assert resp.status_code == 200 and b"Wrong username or password" in resp.data
    resp, client = _login(app, address="10.0.1.1")
    assert resp.status_code == 429
    assert b"Too many failed attempts; try again in 15 minutes." in resp.data
    assert 840 <= int(resp.headers["Retry-After"]) <= 900
    assert client.get("/admin/").status_code == 302  # not logged in
    assert sum("failed admin login" in r.getMessage() for r in caplog.records) == 10
    assert any("too many failures" in r.getMessage() for r in caplog.records)


def test_failed_logins_from_one_address_lock_it_for_every_username(app: Flask) -> None:
    admin_client(app)
    for i in range(10):
        _login(app, "wrong-password", address="10.9.9.9", username=f"nobody-{i}")
    assert _login(app, address="10.9.9.9")[0].status_code == 429
    assert _login(app, address="10.9.9.8")[0].status_code == 302  # others are not slowed


def test_the_throttle_does_not_tell_which_users_exist(app: Flask) -> None:
    admin_client(app)
    answers = []
    for name in (ADMIN_USER, "no-such-user"):
        for i in range(11):
            resp, _ = _login(
                app, "wrong-password", address=f"10.{len(answers)}.0.{i}", username=name
            )
        answers.append((resp.status_code, resp.data.count(b"Too many failed attempts")))
    assert answers[0] == answers[1] == (429, 1)


def test_logins_are_allowed_again_when_the_window_has_passed(quick_app: Flask) -> None:
    admin_client(quick_app)
    for _ in range(3):
        _login(quick_app, "wrong-password")
    assert _login(quick_app)[0].status_code == 429
    time.sleep(2.1)
    assert _login(quick_app)[0].status_code == 302


def test_failed_api_tokens_are_throttled_per_address(quick_app: Flask) -> None:
    bad = quick_app.test_client()
    bad.environ_base.update(REMOTE_ADDR="10.7.7.7", HTTP_AUTHORIZATION="Bearer pq_guess")
    for _ in range(3):
        assert bad.get("/api/v1/parsers").status_code == 401
    resp = bad.get("/api/v1/parsers")
    assert resp.status_code == 429
    assert resp.json["error"]["code"] == "too_many_requests"
    assert 1 <= int(resp.headers["Retry-After"]) <= 2
    good = api_client(quick_app)  # a valid token, but from the locked address
    good.environ_base["REMOTE_ADDR"] = "10.7.7.7"
    assert good.get("/api/v1/parsers").status_code == 429
    good.environ_base["REMOTE_ADDR"] = "10.7.7.8"
    assert good.get("/api/v1/parsers").status_code == 200
    time.sleep(2.1)
    good.environ_base["REMOTE_ADDR"] = "10.7.7.7"
    assert good.get("/api/v1/parsers").status_code == 200


def test_a_throttle_storage_that_is_not_supported_is_a_config_error(tmp_path: Path) -> None:
    from parseq.core.errors import ConfigError

    with pytest.raises(ConfigError, match="PARSEQ_THROTTLE_STORAGE_URL"):
        Config.from_env({"PARSEQ_THROTTLE_STORAGE_URL": "mongodb://x"}, var_dir=tmp_path)


@pytest.mark.services
def test_redis_storage_shares_the_counts_between_web_processes(
    make_config: Callable[..., Config],
) -> None:
    """Two apps (as two gunicorn workers) on one Redis: failures at one lock the other."""
    import uuid

    from tests.conftest import REDIS_URL

    config = make_config(
        throttle_storage_url=REDIS_URL, login_max_failures=2, login_failure_window_s=5
    )
    first, second = create_app(config), create_app(config)
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    header = f"Bearer pq_{uuid.uuid4().hex}"
    clients = [app.test_client() for app in (first, second)]
    for client in clients:
        client.environ_base.update(REMOTE_ADDR=address, HTTP_AUTHORIZATION=header)
    with first.app_context():
        init_db(first)
        assert clients[0].get("/api/v1/parsers").status_code == 401
        assert clients[0].get("/api/v1/parsers").status_code == 401
    with second.app_context():
        assert clients[1].get("/api/v1/parsers").status_code == 429
        db.engine.dispose()
