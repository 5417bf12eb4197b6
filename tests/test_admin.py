"""The admin panel through Flask's test client: login, CSRF, every view, form and action."""

from __future__ import annotations

import io
import json
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from parseq.db.models import Parser, ParserKind, Run, RunStatus, RunTrigger, User, db, utcnow
from parseq.services import code_store, runs
from parseq.worker import execution
from tests.conftest import (
    FIXTURE_PARSERS,
    add_parser,
    admin_client,
    csrf_from,
    sql_sent,
    web_client,
)

SECRET = "s3cr3t-value-never-shown"


@pytest.fixture
def app(sqlite_app: Flask) -> Flask:
    """SQLite, local storage, no worker: runs stay pending unless executed in the test."""
    add_parser("echo", "echo_env.py", secrets={"API_TOKEN": SECRET}, default_args={"who": "x"})
    add_parser("fail", "fail.py")
    return sqlite_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return admin_client(app)


def _post(client: FlaskClient, url: str, data: dict | None = None, **kw):  # type: ignore[no-untyped-def]
    return client.post(url, data={**(data or {}), "csrf_token": client.csrf_token}, **kw)


def _parser(name: str) -> Parser | None:
    db.session.expire_all()
    return db.session.execute(db.select(Parser).filter_by(name=name)).scalar_one_or_none()


def _form(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "new-one",
        "description": "made in a test",
        "script": "script:echo_env.py",
        "requirements": "",
        "default_args": '{"who": "form"}',
        "secrets_set": "",
        "timeout_s": "30",
        "max_retries": "1",
        "enabled": "y",
    }
    data.update(overrides)
    return data


def _ran(parser_name: str = "echo", **args: object) -> Run:
    """A run executed in this process (stored files and all)."""
    return execution.run_now(runs.get_parser(parser_name), args or None)


# --- login ---------------------------------------------------------------------------------


ADMIN_PAGES = [
    "/admin/",
    "/admin/parsers/",
    "/admin/parsers/new/",
    "/admin/parsers/edit/?id=1",
    "/admin/parsers/details/?id=1",
    "/admin/parsers/run/1",
    "/admin/runs/",
    "/admin/runs/details/?id=1",
    "/admin/runs/1/files/output.txt",
]


@pytest.mark.parametrize("url", ADMIN_PAGES)
def test_every_admin_page_needs_a_login(app: Flask, url: str) -> None:
    _ran()
    resp = web_client(app).get(url)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("url", ADMIN_PAGES)
def test_every_admin_page_renders_for_a_logged_in_user(client: FlaskClient, url: str) -> None:
    _ran()
    resp = client.get(url)
    assert resp.status_code == 200, resp.data[-2000:]
    assert SECRET.encode() not in resp.data


def test_posts_without_login_are_refused(app: Flask) -> None:
    anon = web_client(app)
    token = csrf_from(anon.get("/admin/login/").data)
    for url in ("/admin/parsers/toggle/1", "/admin/parsers/run/1", "/admin/runs/1/again"):
        resp = anon.post(url, data={"csrf_token": token})
        assert resp.status_code == 302 and "/admin/login/" in resp.headers["Location"]
    assert db.session.execute(db.select(Run)).first() is None
    assert _parser("echo").enabled


def test_login_with_a_wrong_password_fails_and_the_right_one_redirects_to_next(
    app: Flask,
) -> None:
    admin_client(app)  # creates the test user
    anon = web_client(app)
    token = csrf_from(anon.get("/admin/login/").data)
    bad = anon.post(
        "/admin/login/",
        data={"username": "test-admin", "password": "wrong-password", "csrf_token": token},
    )
    assert bad.status_code == 200 and b"Wrong username or password" in bad.data
    assert anon.get("/admin/").status_code == 302

    good = anon.post(
        "/admin/login/?next=/admin/runs/",
        data={"username": "test-admin", "password": "test-admin-password", "csrf_token": token},
    )
    assert good.headers["Location"] == "/admin/runs/"
    assert anon.get("/admin/").status_code == 200
    user = db.session.execute(db.select(User).filter_by(username="test-admin")).scalar_one()
    assert user.last_login_at is not None
    assert user.password_hash != "test-admin-password" and "test-admin-password" not in (
        user.password_hash
    )


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x"]
)
def test_login_never_redirects_off_site(app: Flask, target: str) -> None:
    admin_client(app)
    anon = web_client(app)
    token = csrf_from(anon.get("/admin/login/").data)
    resp = anon.post(
        "/admin/login/",
        query_string={"next": target},
        data={"username": "test-admin", "password": "test-admin-password", "csrf_token": token},
    )
    assert resp.headers["Location"] == "/admin/"


def test_logout_ends_the_session(client: FlaskClient) -> None:
    assert _post(client, "/admin/login/logout").status_code == 302
    assert client.get("/admin/").status_code == 302


# --- CSRF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, data",
    [
        ("/admin/parsers/new/", _form()),
        ("/admin/parsers/edit/?id=1", _form(name="echo")),
        ("/admin/parsers/action/", {"action": "run", "rowid": "1"}),
        ("/admin/parsers/delete/", {"id": "1"}),
        ("/admin/parsers/toggle/1", {}),
        ("/admin/parsers/run/1", {"args": "{}"}),
        ("/admin/runs/1/cancel", {}),
        ("/admin/runs/1/again", {}),
        ("/admin/login/logout", {}),
    ],
)
def test_posts_without_a_csrf_token_are_rejected(client: FlaskClient, url: str, data: dict) -> None:
    runs.create_run(runs.get_parser("echo"), enqueue=False)
    assert client.post(url, data=data).status_code == 400
    assert client.post(url, data={**data, "csrf_token": "forged"}).status_code == 400
    db.session.expire_all()
    assert db.session.execute(db.select(db.func.count(Run.id))).scalar() == 1
    assert db.session.get(Run, 1).status is RunStatus.PENDING
    assert _parser("echo").enabled and _parser("new-one") is None
    assert client.get("/admin/").status_code == 200  # still logged in


def test_login_form_needs_csrf_too(app: Flask) -> None:
    admin_client(app)
    resp = web_client(app).post(
        "/admin/login/", data={"username": "test-admin", "password": "test-admin-password"}
    )
    assert resp.status_code == 400


def test_the_rest_api_is_exempt_from_csrf(app: Flask) -> None:
    from tests.conftest import api_client

    resp = api_client(app).post("/api/v1/parsers/echo/runs", json={})
    assert resp.status_code == 202


# --- parsers: create and edit --------------------------------------------------------------


def test_create_parser_from_a_listed_script(client: FlaskClient) -> None:
    page = client.get("/admin/parsers/new/").data.decode()
    assert 'value="script:echo_env.py"' in page and "parsers/echo_env.py" in page
    resp = _post(client, "/admin/parsers/new/", _form(secrets_set="API_TOKEN=abc\nOTHER=x=y"))
    assert resp.status_code == 302, resp.data.decode()[-2000:]
    parser = _parser("new-one")
    assert parser.kind is ParserKind.SCRIPT and parser.path == "echo_env.py"
    assert parser.default_args == {"who": "form"}
    assert parser.secrets == {"API_TOKEN": "abc", "OTHER": "x=y"}
    assert parser.timeout_s == 30 and parser.max_retries == 1 and parser.enabled


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"default_args": "{not json"}, "not valid JSON"),
        ({"default_args": "[1, 2]"}, "args must be a JSON object"),
        ({"default_args": '{"bad name": 1}'}, "bad name"),
        ({"name": "Bad Name"}, "name must be"),
        ({"name": "echo"}, "a parser named &#39;echo&#39; exists"),
        ({"script": ""}, "choose a script or notebook, or upload one"),
        ({"script": "script:../etc/passwd.py"}, "Not a valid choice"),
        ({"secrets_set": "no equals sign"}, "line 1: expected NAME=value"),
        ({"secrets_set": "PATH=/tmp"}, "reserved"),
        # The API's messages (parseq.parser_rules), since #23.
        ({"timeout_s": "-5"}, "must be a number of seconds &gt; 0"),
        ({"max_retries": "-1"}, "must be a whole number from 0 to 100"),
        ({"max_memory_bytes": "-1"}, "must be a whole number of bytes from 0 (no limit)"),
    ],
)
def test_create_parser_form_errors(client: FlaskClient, overrides: dict, message: str) -> None:
    resp = _post(client, "/admin/parsers/new/", _form(**overrides))
    assert resp.status_code == 200
    assert message in resp.data.decode()
    assert _parser("new-one") is None and _parser("Bad Name") is None


@pytest.fixture
def upload_app(make_config, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An app with parsers/ and notebooks/ of its own, to show uploads never land there."""
    from parseq.web.app import create_app, init_db

    parsers = tmp_path / "parsers"
    shutil.copytree(FIXTURE_PARSERS, parsers)
    app = create_app(make_config(parsers_dir=parsers, notebooks_dir=tmp_path / "notebooks"))
    init_db(app)
    with app.app_context():
        yield app
        db.engine.dispose()


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def test_upload_a_script_or_notebook_stores_a_version_not_a_file(
    upload_app: Flask, tmp_path: Path
) -> None:
    import nbformat

    before = (_tree(tmp_path / "parsers"), _tree(tmp_path / "notebooks"))
    client = admin_client(upload_app)
    script = b"print('uploaded')\n"
    resp = _post(
        client,
        "/admin/parsers/new/",
        _form(name="up", script="", upload=(io.BytesIO(script), "mine.py")),
        content_type="multipart/form-data",
    )
    assert resp.status_code == 302, resp.data.decode()[-2000:]
    parser = _parser("up")
    assert (parser.kind, parser.path, parser.code_version) == (ParserKind.SCRIPT, "", 1)
    storage = upload_app.extensions["parseq"].storage
    [version] = code_store.list_versions(parser)
    assert version.source.value == "upload"
    assert b"".join(code_store.read(storage, version)) == script

    nb = nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]))
    resp = _post(
        client,
        "/admin/parsers/new/",
        _form(name="nb", script="", upload=(io.BytesIO(nb.encode()), "x.ipynb")),
        content_type="multipart/form-data",
    )
    assert resp.status_code == 302, resp.data.decode()[-2000:]
    assert _parser("nb").kind is ParserKind.NOTEBOOK
    assert (_tree(tmp_path / "parsers"), _tree(tmp_path / "notebooks")) == before

    for name, data, message in [
        ("txt", b"x", "upload a .py script"),
        ("badnb", b"{not a notebook", "not valid JSON"),
    ]:
        filename = "x.txt" if name == "txt" else "x.ipynb"
        resp = _post(
            client,
            "/admin/parsers/new/",
            _form(name=name, script="", upload=(io.BytesIO(data), filename)),
            content_type="multipart/form-data",
        )
        assert message in resp.data.decode() and _parser(name) is None


def test_editing_code_in_the_form_makes_a_version_and_runs_show_it(upload_app: Flask) -> None:
    client = admin_client(upload_app)
    upload = (io.BytesIO(b"print('one')\n"), "one.py")
    form = _form(name="ed", script="", upload=upload)
    resp = _post(client, "/admin/parsers/new/", form, content_type="multipart/form-data")
    assert resp.status_code == 302, resp.data.decode()[-2000:]
    parser = _parser("ed")
    page = client.get(f"/admin/parsers/edit/?id={parser.id}").data.decode()
    assert "print(&#39;one&#39;)" in page and "stored code, version 1" in page
    resp = _post(
        client,
        f"/admin/parsers/edit/?id={parser.id}",
        _form(name="ed", script="stored:", code_edit="print('two')\n"),
    )
    assert resp.status_code == 302, resp.data.decode()[-2000:]
    parser = _parser("ed")
    assert parser.code_version == 2
    assert [v.source.value for v in code_store.list_versions(parser)] == ["edit", "upload"]
    # Saving again without a change keeps the version.
    _post(client, f"/admin/parsers/edit/?id={parser.id}", _form(name="ed", script="stored:"))
    assert _parser("ed").code_version == 2
    run = execution.run_now(parser, {})
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.code_version == 2
    details = client.get(f"/admin/runs/details/?id={run.id}").data.decode()
    assert "/api/v1/parsers/ed/code?version=2" in details
    old = client.get("/api/v1/parsers/ed/code?version=1")  # the admin session may download
    assert old.status_code == 200 and old.data == b"print('one')\n"
    listing = client.get(f"/admin/parsers/details/?id={parser.id}").data.decode()
    assert "code-versions" in listing and "(current)" in listing


def test_edit_form_never_renders_secrets_and_can_replace_or_remove_them(
    client: FlaskClient,
) -> None:
    parser = _parser("echo")
    parser.secrets = {"API_TOKEN": SECRET, "KEEP": "kept-value", "DROP": "drop-value"}
    db.session.commit()
    page = client.get("/admin/parsers/edit/?id=1").data.decode()
    for value in (SECRET, "kept-value", "drop-value"):
        assert value not in page
    assert 'value="DROP"' in page  # names are listed for removal
    assert 'selected value="script:echo_env.py"' in page or (
        'value="script:echo_env.py" selected' in page
    )

    # Saving with the secret fields empty keeps the secrets.
    resp = _post(client, "/admin/parsers/edit/?id=1", _form(name="echo", description="changed"))
    assert resp.status_code == 302, resp.data.decode()[-2000:]
    assert _parser("echo").secrets["API_TOKEN"] == SECRET
    assert _parser("echo").description == "changed"

    resp = _post(
        client,
        "/admin/parsers/edit/?id=1",
        _form(name="echo", secrets_set="API_TOKEN=new-token", secrets_remove=["DROP"]),
    )
    assert resp.status_code == 302
    assert _parser("echo").secrets == {"API_TOKEN": "new-token", "KEEP": "kept-value"}


def test_secrets_appear_in_no_page(client: FlaskClient) -> None:
    run = _ran()
    _ran("fail")
    pages = [
        "/admin/",
        "/admin/parsers/",
        "/admin/parsers/?search=echo",
        "/admin/parsers/details/?id=1",
        "/admin/parsers/edit/?id=1",
        "/admin/parsers/run/1",
        "/admin/runs/",
        f"/admin/runs/details/?id={run.id}",
    ]
    for url in pages:
        body = client.get(url).data.decode()
        assert SECRET not in body, url
    details = client.get("/admin/parsers/details/?id=1").data.decode()
    assert "API_TOKEN" in details and "••••" in details


# --- parsers: list, detail, actions --------------------------------------------------------


def test_parser_list_shows_last_run_and_searches(client: FlaskClient) -> None:
    _ran("fail")
    page = client.get("/admin/parsers/").data.decode()
    assert "badge-danger status-error" in page  # fail's last run, coloured
    assert "never run" in page  # echo
    assert 'title="Run now"' in page and "/admin/parsers/toggle/1" in page
    found = client.get("/admin/parsers/?search=fail").data.decode()
    assert "fail.py" not in found or ">fail<" in found
    assert "echo_env" not in found


def test_parser_details_show_history_and_latest_output(client: FlaskClient) -> None:
    first = _ran(who="one")
    second = _ran(who="two")
    page = client.get("/admin/parsers/details/?id=1").data.decode()
    assert f"/admin/runs/details/?id={first.id}" in page
    assert f"/admin/runs/details/?id={second.id}" in page
    latest = f"/admin/runs/{second.id}/files/output.txt"
    assert latest in page
    assert client.get(latest).data == b"hello two\n"


def test_run_now_with_args_queues_a_run_through_the_service(client: FlaskClient) -> None:
    form = client.get("/admin/parsers/run/1").data.decode()
    assert "&#34;who&#34;: &#34;x&#34;" in form  # prefilled with the default args
    resp = _post(client, "/admin/parsers/run/1", {"args": '{"who": "now", "pages": 2}'})
    assert resp.status_code == 302
    run = db.session.execute(db.select(Run)).scalar_one()
    assert resp.headers["Location"] == f"/admin/runs/details/?id={run.id}"
    assert run.args == {"who": "now", "pages": 2}
    assert run.trigger is RunTrigger.MANUAL and run.status is RunStatus.PENDING


@pytest.mark.parametrize(
    "args, message", [("{oops", "not valid JSON"), ('"x"', "must be a JSON object")]
)
def test_run_now_rejects_bad_args(client: FlaskClient, args: str, message: str) -> None:
    resp = _post(client, "/admin/parsers/run/1", {"args": args})
    assert resp.status_code == 200 and message in resp.data.decode()
    assert db.session.execute(db.select(Run)).first() is None


def test_toggle_enables_and_disables(client: FlaskClient) -> None:
    _post(client, "/admin/parsers/toggle/1", {"url": "/admin/parsers/"})
    assert not _parser("echo").enabled
    assert "fa-toggle-on" in client.get("/admin/parsers/").data.decode()
    _post(client, "/admin/parsers/toggle/1")
    assert _parser("echo").enabled


def test_bulk_actions(client: FlaskClient) -> None:
    both = ["1", "2"]
    _post(client, "/admin/parsers/action/", {"action": "disable", "rowid": both})
    assert not _parser("echo").enabled and not _parser("fail").enabled
    _post(client, "/admin/parsers/action/", {"action": "enable", "rowid": both})
    assert _parser("echo").enabled and _parser("fail").enabled
    _post(client, "/admin/parsers/action/", {"action": "run", "rowid": both})
    queued = db.session.execute(db.select(Run).order_by(Run.id)).scalars().all()
    assert [r.parser.name for r in queued] == ["echo", "fail"]


def test_delete_follows_the_api_rule_and_removes_stored_files(
    app: Flask, client: FlaskClient
) -> None:
    from tests.conftest import api_client

    done = _ran()
    keys = [f.storage_key for f in done.files]
    storage = app.extensions["parseq"].storage
    assert keys and all(storage.exists(k) for k in keys)
    pending = runs.create_run(runs.get_parser("echo"), enqueue=False)
    api_refusal = api_client(app).delete("/api/v1/parsers/echo").json["error"]["message"]
    assert "1 pending or running run(s)" in api_refusal

    resp = _post(client, "/admin/parsers/delete/", {"id": "1"}, follow_redirects=True)
    assert api_refusal.replace("'", "&#39;") in resp.data.decode()
    resp = _post(client, "/admin/parsers/action/", {"action": "delete", "rowid": ["1"]})
    assert _parser("echo") is not None and all(storage.exists(k) for k in keys)

    runs.cancel_run(pending)
    resp = _post(client, "/admin/parsers/delete/", {"id": "1"}, follow_redirects=True)
    assert "successfully deleted" in resp.data.decode()
    assert _parser("echo") is None
    assert db.session.execute(db.select(Run)).first() is None
    assert not any(storage.exists(k) for k in keys)


# --- runs ----------------------------------------------------------------------------------


def _row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'/admin/runs/details/\?id=(\d+)">\d+</a>', html)]


def test_runs_list_newest_first_with_server_side_pages(client: FlaskClient) -> None:
    parser = runs.get_parser("echo")
    for _ in range(55):
        runs.create_run(parser, enqueue=False)
    first = client.get("/admin/runs/").data.decode()
    assert _row_ids(first) == list(range(55, 5, -1))
    assert "List (55)" in first
    assert _row_ids(client.get("/admin/runs/?page=1").data.decode()) == [5, 4, 3, 2, 1]


def test_runs_list_pages_runs_without_joining_their_parsers(client: FlaskClient) -> None:
    """The page's parsers come in a query of their own: joined in the paged query, every run
    that OFFSET skips was joined too (page 1,000 of a million runs took 5x the SQL)."""
    echo, fail = runs.get_parser("echo"), runs.get_parser("fail")
    for parser in (echo, fail, echo):
        runs.create_run(parser, enqueue=False)
    with sql_sent(db.engine) as sent:
        page = client.get("/admin/runs/").data.decode()
    statements = [" ".join(s.lower().split()) for s in sent]
    paged = [s for s in statements if "from runs" in s and "limit" in s and "count(" not in s]
    assert len(paged) == 1, statements
    assert "join" not in paged[0] and "parsers" not in paged[0].split("from runs")[1]
    assert [s for s in statements if "from parsers" in s and " in (" in s]  # the page's parsers
    assert page.count('href="/admin/parsers/details/?id=') >= 3  # every row names its parser


def test_runs_list_filters_by_parser_status_and_date(client: FlaskClient) -> None:
    echo, fail = runs.get_parser("echo"), runs.get_parser("fail")
    old = runs.create_run(echo, enqueue=False)
    old.queued_at = utcnow() - timedelta(days=3)
    db.session.commit()
    new = runs.create_run(echo, enqueue=False)
    failed = _ran("fail")

    page = client.get("/admin/runs/").data.decode()
    assert f'[{fail.id}, "fail"]' in page  # the parser filter's options, current parsers

    # Filter indices follow RunView.column_filters: parser, status, trigger, queued.
    by_parser = client.get(f"/admin/runs/?flt0_0={fail.id}").data.decode()
    assert _row_ids(by_parser) == [failed.id]
    by_status = client.get("/admin/runs/?flt0_1=pending").data.decode()
    assert _row_ids(by_status) == [new.id, old.id]
    day = (utcnow() - timedelta(days=3)).strftime("%Y-%m-%d")
    span = f"{day} 00:00:00 to {day} 23:59:59"
    by_date = client.get("/admin/runs/", query_string={"flt0_3": span}).data.decode()
    assert _row_ids(by_date) == [old.id]


def test_running_runs_show_a_progress_bar(client: FlaskClient) -> None:
    run = runs.create_run(runs.get_parser("echo"), enqueue=False)
    execution.claim(run.id)
    run.progress_done, run.progress_total, run.progress_message = 3, 4, "page 3 of 4"
    db.session.commit()
    page = client.get("/admin/runs/").data.decode()
    assert 'style="width: 75%"' in page and "page 3 of 4" in page
    assert "badge-primary status-running" in page


def test_run_details_show_files_log_tail_and_output_preview(client: FlaskClient) -> None:
    run = _ran(who="detail")
    page = client.get(f"/admin/runs/details/?id={run.id}").data.decode()
    assert run.env_key is None or run.env_key in page
    assert "&#34;who&#34;: &#34;detail&#34;" in page  # args
    for name in ("data/items.csv", "output.txt", "report.json", "run.log"):
        assert f"/admin/runs/{run.id}/files/{name}" in page
    preview = re.search(r'id="output-preview">(.*?)</pre>', page, re.S)
    assert preview and preview.group(1).strip() == "hello detail"
    tail = re.search(r'id="log-tail">(.*?)</pre>', page, re.S)
    assert tail and "stdout line" in tail.group(1) and "stderr line" in tail.group(1)
    assert 'id="cancel-run"' not in page  # final runs cannot be cancelled
    csv = client.get(f"/admin/runs/{run.id}/files/data/items.csv")
    assert csv.data == b"id,name\n1,alpha\n"
    assert csv.headers["Content-Disposition"].startswith('attachment; filename="items.csv"')
    assert client.get(f"/admin/runs/{run.id}/files/../../etc/passwd").status_code == 404


def test_failed_run_details_show_exit_code_and_error(client: FlaskClient) -> None:
    run = _ran("fail")
    page = client.get(f"/admin/runs/details/?id={run.id}").data.decode()
    assert "badge-danger status-error" in page
    assert "the site changed its layout" in page


def test_long_logs_show_only_their_tail(client: FlaskClient) -> None:
    add_parser("chatty", "chatty.py")
    run = _ran("chatty")
    page = client.get(f"/admin/runs/details/?id={run.id}").data.decode()
    tail = re.search(r'id="log-tail">(.*?)</pre>', page, re.S).group(1)
    assert "line 019999" in tail and "line 000000" not in tail
    assert len(tail.splitlines()) <= 200
    assert "(last lines)" in page


def test_cancel_a_pending_run_and_refuse_a_final_one(client: FlaskClient) -> None:
    pending = runs.create_run(runs.get_parser("echo"), enqueue=False)
    page = client.get(f"/admin/runs/details/?id={pending.id}").data.decode()
    assert 'id="cancel-run"' in page and 'http-equiv="refresh"' in page
    resp = _post(client, f"/admin/runs/{pending.id}/cancel")
    assert resp.status_code == 302
    db.session.expire_all()
    assert db.session.get(Run, pending.id).status is RunStatus.CANCELLED

    done = _ran()
    resp = _post(client, f"/admin/runs/{done.id}/cancel", follow_redirects=True)
    assert f"run {done.id} is already completed" in resp.data.decode()
    db.session.expire_all()
    assert db.session.get(Run, done.id).status is RunStatus.COMPLETED


def test_run_again_queues_a_new_run_with_the_same_args(client: FlaskClient) -> None:
    old = _ran(who="again")
    resp = _post(client, f"/admin/runs/{old.id}/again")
    new = db.session.execute(db.select(Run).order_by(Run.id.desc())).scalars().first()
    assert new.id != old.id and new.args == old.args
    assert resp.headers["Location"].startswith(f"/admin/runs/details/?id={new.id}")


def test_unknown_run_or_file_is_404(client: FlaskClient) -> None:
    assert client.get("/admin/runs/999/files/output.txt").status_code == 404
    run = _ran()
    assert client.get(f"/admin/runs/{run.id}/files/nope.txt").status_code == 404
    assert _post(client, "/admin/runs/999/cancel").status_code == 404


# --- dashboard -----------------------------------------------------------------------------


def test_dashboard_counts_failures_chart_and_queue(client: FlaskClient) -> None:
    _ran()
    failed = _ran("fail")
    old = runs.create_run(runs.get_parser("echo"), enqueue=False)
    old.queued_at = utcnow() - timedelta(days=2)  # outside the 24 h window
    db.session.commit()
    runs.create_run(runs.get_parser("echo"))  # queued on the in-memory broker, no worker
    page = client.get("/admin/").data.decode()
    counts = dict(re.findall(r"status-(\w+)\">\w+</span> <b>(\d+)</b>", page))
    assert counts == {
        "pending": "1",
        "running": "0",
        "completed": "1",
        "error": "1",
        "timeout": "0",
        "cancelled": "0",
    }
    assert "<svg" in page and "<rect" in page
    assert f"/admin/runs/details/?id={failed.id}" in page.split('id="recent-failures"')[1]
    assert 'id="queue-depth">1<' in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing external


def test_hourly_buckets_and_chart() -> None:
    from parseq.web.admin.dashboard import hourly_buckets, svg_chart

    now = utcnow()
    rows = [
        (now - timedelta(minutes=5), RunStatus.COMPLETED),
        (now - timedelta(minutes=10), RunStatus.ERROR),
        (now - timedelta(hours=5, minutes=1), RunStatus.COMPLETED),
        (now - timedelta(hours=30), RunStatus.COMPLETED),  # outside
    ]
    buckets = hourly_buckets(rows, now)
    assert len(buckets) == 24
    assert buckets[-1] == {RunStatus.COMPLETED: 1, RunStatus.ERROR: 1}
    assert buckets[-6] == {RunStatus.COMPLETED: 1}
    assert sum(sum(b.values()) for b in buckets) == 3
    svg = str(svg_chart(buckets, now))
    assert svg.count("<rect") == 3 and "1 error" in svg


# --- helpers -------------------------------------------------------------------------------


def test_create_user_rules(app: Flask) -> None:
    from parseq.core.errors import Conflict, NotFound, ValidationError
    from parseq.web.admin.auth import authenticate, create_user, ensure_admin, set_password

    assert ensure_admin("given-password") is None  # from PARSEQ_ADMIN_PASSWORD: not printed
    assert authenticate("admin", "given-password") is not None
    assert ensure_admin() is None  # users exist: nothing happens
    with pytest.raises(Conflict):
        create_user("admin", "another-password")
    with pytest.raises(ValidationError):
        create_user("bob", "short")
    with pytest.raises(ValidationError):
        create_user("Bob Smith", "long-enough")
    with pytest.raises(NotFound):
        set_password("nobody", "long-enough")
    set_password("admin", "changed-password")
    assert authenticate("admin", "given-password") is None
    assert authenticate("admin", "changed-password") is not None
    assert authenticate("nobody", "changed-password") is None
    assert json.dumps([u.username for u in db.session.execute(db.select(User)).scalars()])
