"""Parser code versions on the embedded default: upload over the API, runs record and run
their version, downloads of any version, validation of what is uploaded."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from parseq.db.code_models import CodeVersion
from parseq.db.models import Parser, Run, RunStatus, db
from parseq.services import code_store
from tests.conftest import api_client, wait_for_run

SCRIPT_V1 = b'print("version one")\n'
SCRIPT_V2 = b'print("version two")\n'


def _notebook(source: str) -> bytes:
    cell = {"cell_type": "code", "metadata": {}, "source": source, "outputs": []}
    cell["execution_count"] = None
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    cell["id"] = "c1"
    return json.dumps(nb).encode()


def _zip(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0
            archive.writestr(info, target)
    return buf.getvalue()


def _tar_gz(files: dict[str, bytes], symlink: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            archive.addfile(info)
    return buf.getvalue()


@pytest.fixture
def client(embedded_app: Flask) -> FlaskClient:
    return api_client(embedded_app)


def _put(client: FlaskClient, name: str, data: bytes, content_type: str) -> Any:
    return client.put(f"/api/v1/parsers/{name}/code", data=data, content_type=content_type)


def _run(client: FlaskClient, name: str) -> Run:
    resp = client.post(f"/api/v1/parsers/{name}/runs", json={})
    assert resp.status_code == 202, resp.json
    return wait_for_run(resp.json["id"])


def _output(client: FlaskClient, run: Run) -> str:
    return client.get(f"/api/v1/runs/{run.id}/files/output.txt").get_data(as_text=True)


def test_an_uploaded_script_runs_and_each_change_is_a_version(client: FlaskClient) -> None:
    first = _put(client, "up", SCRIPT_V1, "text/x-python")
    assert first.status_code == 201, first.json
    assert first.json["version"] == 1 and first.json["kind"] == "script"
    assert first.json["source"] == "api" and first.json["current"] is True
    run1 = _run(client, "up")
    assert run1.status is RunStatus.COMPLETED, run1.error
    assert _output(client, run1) == "version one\n"

    second = _put(client, "up", SCRIPT_V2, "text/x-python")
    assert second.status_code == 200 and second.json["version"] == 2
    same = _put(client, "up", SCRIPT_V2, "text/x-python")
    assert same.json["version"] == 2  # unchanged content: no new version
    run2 = _run(client, "up")
    assert _output(client, run2) == "version two\n"
    assert client.get(f"/api/v1/runs/{run1.id}").json["code_version"] == 1
    assert client.get(f"/api/v1/runs/{run2.id}").json["code_version"] == 2
    assert client.get("/api/v1/parsers/up").json["code_version"] == 2

    old = client.get("/api/v1/parsers/up/code?version=1")
    assert old.status_code == 200 and old.data == SCRIPT_V1
    assert old.headers["Content-Type"].startswith("text/x-python")
    assert 'filename="up.py"' in old.headers["Content-Disposition"]
    assert client.get("/api/v1/parsers/up/code").data == SCRIPT_V2
    listed = client.get("/api/v1/parsers/up/code/versions").json["versions"]
    assert [v["version"] for v in listed] == [2, 1]
    assert client.get("/api/v1/parsers/up/code?version=7").status_code == 404


def test_two_parsers_with_the_same_code_share_its_cache_and_both_run(
    client: FlaskClient,
) -> None:
    for name in ("twin-a", "twin-b"):
        assert _put(client, name, SCRIPT_V1, "text/x-python").status_code == 201
        run = _run(client, name)
        assert run.status is RunStatus.COMPLETED, run.error
        assert _output(client, run) == "version one\n"
    assert (
        'filename="twin-b.py"'
        in client.get("/api/v1/parsers/twin-b/code").headers["Content-Disposition"]
    )


def test_uploads_never_write_into_the_parsers_folder(
    client: FlaskClient, embedded_app: Flask
) -> None:
    config = embedded_app.extensions["parseq"].config
    before = sorted(p.relative_to(config.parsers_dir) for p in config.parsers_dir.rglob("*"))
    assert _put(client, "nowhere", SCRIPT_V1, "text/x-python").status_code == 201
    after = sorted(p.relative_to(config.parsers_dir) for p in config.parsers_dir.rglob("*"))
    assert before == after
    assert db.session.execute(db.select(Parser).filter_by(name="nowhere")).scalar_one().path == ""


def test_a_folder_archive_runs_with_its_shipped_files(client: FlaskClient) -> None:
    main = b"import pathlib\nprint(pathlib.Path('data/greeting.txt').read_text().strip())\n"
    archive = _zip({"pkg/main.py": main, "pkg/data/greeting.txt": b"hi from the folder\n"})
    resp = _put(client, "folder", archive, "application/zip")
    assert resp.status_code == 201, resp.json
    assert resp.json["format"] == "zip" and resp.json["kind"] == "script"
    run = _run(client, "folder")
    assert run.status is RunStatus.COMPLETED, run.error
    assert _output(client, run) == "hi from the folder\n"
    assert client.get("/api/v1/parsers/folder/code").data == archive


def test_a_notebook_upload_makes_a_notebook_parser(client: FlaskClient) -> None:
    resp = _put(client, "nb", _notebook("print(6 * 7)"), "application/x-ipynb+json")
    assert resp.status_code == 201, resp.json
    assert resp.json["kind"] == "notebook"
    run = _run(client, "nb")
    assert run.status is RunStatus.COMPLETED, run.error
    assert "42" in _output(client, run)


@pytest.mark.parametrize(
    ("data", "content_type", "says"),
    [
        (b'{"cells": []}', "application/x-ipynb+json", "nbformat"),
        (b"not json", "application/x-ipynb+json", "not valid JSON"),
        (_zip({"../evil/main.py": b"x"}), "application/zip", "leaves the folder"),
        (_zip({"/abs/main.py": b"x"}), "application/zip", "leaves the folder"),
        (_zip({"main.py": b"x"}, links={"link": "/etc/passwd"}), "application/zip", "links"),
        (_tar_gz({"main.py": b"x"}, ("link", "/etc/passwd")), "application/gzip", "links"),
        (_tar_gz({"a/../../main.py": b"x"}), "application/gzip", "leaves the folder"),
        (_zip({"readme.txt": b"x"}), "application/zip", "no main.py"),
        (b"PK\x03\x04 broken", "application/zip", "not a valid zip"),
        (b"\xff\xfe bad", "text/x-python", "not UTF-8"),
        (b"", "text/x-python", "empty"),
        (b"x", "image/png", "upload a .py script"),
    ],
)
def test_bad_uploads_are_422_and_store_nothing(
    client: FlaskClient, data: bytes, content_type: str, says: str
) -> None:
    resp = _put(client, "bad", data, content_type)
    assert resp.status_code == 422, resp.json
    assert resp.json["error"]["code"] == "validation_error"
    assert says in resp.json["error"]["message"]
    assert db.session.execute(db.select(Parser).filter_by(name="bad")).first() is None
    assert db.session.execute(db.select(CodeVersion)).first() is None


def test_too_big_is_413(make_config: Any, tmp_path: Path) -> None:
    from tests.conftest import running

    with running(make_config(code_max_bytes=100)) as app:
        resp = _put(api_client(app), "big", b"#" * 101, "text/x-python")
        assert resp.status_code == 413 and resp.json["error"]["code"] == "payload_too_large"
        archive = _zip({"main.py": b"x" * 5000})
        assert len(archive) <= 300
    with running(make_config(code_max_bytes=10_000, code_max_unpacked_bytes=1000)) as app:
        resp = _put(api_client(app), "bomb", archive, "application/zip")
        assert resp.status_code == 422 and "unpacks to more than" in resp.json["error"]["message"]


def test_a_read_only_token_downloads_but_cannot_upload(embedded_app: Flask) -> None:
    writer, reader = api_client(embedded_app), api_client(embedded_app, read_only=True)
    assert _put(writer, "ro", SCRIPT_V1, "text/x-python").status_code == 201
    assert reader.get("/api/v1/parsers/ro/code").data == SCRIPT_V1
    refused = _put(reader, "ro", SCRIPT_V2, "text/x-python")
    assert refused.status_code == 403 and refused.json["error"]["code"] == "forbidden"
    assert api_client(embedded_app, auth=False).get("/api/v1/parsers/ro/code").status_code == 401


def test_the_start_up_sync_versions_shipped_files_and_their_changes(make_config: Any) -> None:
    from tests.conftest import running

    config = make_config(parsers_dir=Path(make_config().var_dir).parent / "shipped")
    config.parsers_dir.mkdir()
    (config.parsers_dir / "hello.py").write_bytes(SCRIPT_V1)
    with running(config, sync_shipped=True) as app:
        storage = app.extensions["parseq"].storage
        parser = db.session.execute(db.select(Parser).filter_by(name="hello")).scalar_one()
        assert parser.code_version == 1
        (config.parsers_dir / "hello.py").write_bytes(SCRIPT_V2)
        code_store.sync(config, storage)
        assert parser.code_version == 2
        code_store.sync(config, storage)  # nothing changed: no version
        assert parser.code_version == 2
        versions = code_store.list_versions(parser)
        assert [(v.number, v.source.value) for v in versions] == [(2, "sync"), (1, "sync")]
        assert b"".join(code_store.read(storage, versions[1])) == SCRIPT_V1
