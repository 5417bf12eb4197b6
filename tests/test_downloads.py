"""Result files over the REST API on local storage: Range, latest run, JSON Lines as JSON."""

from __future__ import annotations

import hashlib

import pytest
from flask import Flask

from parseq.db.models import Run
from parseq.services import runs
from parseq.worker import execution
from tests.conftest import add_parser, api_client

BLOB = bytes(i % 251 for i in range(300_000))


@pytest.fixture
def client(sqlite_app: Flask):  # type: ignore[no-untyped-def]
    return api_client(sqlite_app)


@pytest.fixture
def run(client) -> Run:  # type: ignore[no-untyped-def]
    parser = add_parser("items", "items.py")
    return execution.run_now(parser, {"count": 3, "blob_bytes": len(BLOB)})


def test_whole_file_advertises_ranges(client, run: Run) -> None:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/v1/runs/{run.id}/files/blob.bin")
    assert resp.status_code == 200
    assert resp.data == BLOB
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Content-Length"] == str(len(BLOB))


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=1000-1000", 1000, 1001),
        ("bytes=299000-", 299_000, 300_000),
        ("bytes=-500", 299_500, 300_000),
        ("bytes=299990-400000", 299_990, 300_000),
        ("bytes=-999999", 0, 300_000),
    ],
)
def test_range_returns_the_exact_slice(
    client, run: Run, header: str, start: int, stop: int
) -> None:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/v1/runs/{run.id}/files/blob.bin", headers={"Range": header})
    assert resp.status_code == 206
    assert resp.data == BLOB[start:stop]
    assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(BLOB)}"
    assert resp.headers["Content-Length"] == str(stop - start)


@pytest.mark.parametrize("header", ["bytes=300000-", "bytes=400000-400010"])
def test_unsatisfiable_range_is_416(client, run: Run, header: str) -> None:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/v1/runs/{run.id}/files/blob.bin", headers={"Range": header})
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(BLOB)}"
    assert resp.json["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=0-1,5-6"},
        {"Range": "lines=1-2"},
        {"Range": "garbage"},
        {"Range": "bytes=0-9", "If-Range": '"not-the-etag"'},
    ],
)
def test_other_ranges_get_the_whole_file(client, run: Run, headers) -> None:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/v1/runs/{run.id}/files/blob.bin", headers=headers)
    assert resp.status_code == 200
    assert resp.data == BLOB


def test_if_range_with_the_current_etag_gets_the_slice(client, run: Run) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/v1/runs/{run.id}/files/blob.bin"
    etag = client.get(url).headers["ETag"]
    resp = client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert resp.status_code == 206 and resp.data == BLOB[10:20]


def test_output_as_json_when_it_is_json_lines(client, run: Run) -> None:  # type: ignore[no-untyped-def]
    resp = client.get(f"/api/v1/runs/{run.id}/files/output.txt?format=json")
    assert resp.status_code == 200
    assert resp.json["items"] == [{"id": i, "name": f"item {i}"} for i in range(3)]
    raw = client.get(f"/api/v1/runs/{run.id}/files/output.txt?format=raw")
    assert raw.data.count(b"\n") == 3


def test_output_as_json_when_it_is_not_json_lines_is_422(client) -> None:  # type: ignore[no-untyped-def]
    run = execution.run_now(add_parser("echo", "echo_env.py"))
    resp = client.get(f"/api/v1/runs/{run.id}/files/output.txt?format=json")
    assert resp.status_code == 422
    assert "line 1 is not valid JSON" in resp.json["error"]["message"]
    assert resp.json["error"]["line"] == 1
    other = client.get(f"/api/v1/runs/{run.id}/files/report.json?format=json")
    assert other.status_code == 400
    assert client.get(f"/api/v1/runs/{run.id}/files/output.txt?format=xml").status_code == 400


def test_json_output_over_the_size_cap_is_refused(make_config) -> None:  # type: ignore[no-untyped-def]
    from parseq.db.models import db
    from parseq.web.app import create_app, init_db

    app = create_app(make_config(max_json_output_bytes=10))
    init_db(app)
    with app.app_context():
        run = execution.run_now(add_parser("items", "items.py"), {"count": 5})
        resp = api_client(app).get(f"/api/v1/runs/{run.id}/files/output.txt?format=json")
        assert resp.status_code == 422
        assert "PARSEQ_MAX_JSON_OUTPUT_BYTES" in resp.json["error"]["message"]
        db.engine.dispose()


def test_latest_serves_the_newest_completed_run(client) -> None:  # type: ignore[no-untyped-def]
    parser = add_parser("items", "items.py")
    assert client.get("/api/v1/parsers/items/latest/files/output.txt").status_code == 404
    execution.run_now(parser, {"count": 1})
    newest = execution.run_now(parser, {"count": 2})
    runs.create_run(parser, enqueue=False)  # pending: not completed, so not "latest"
    failed = add_parser("fail", "fail.py")
    execution.run_now(failed)

    listed = client.get("/api/v1/parsers/items/latest/files").json
    assert listed["run_id"] == newest.id
    assert "output.txt" in [f["name"] for f in listed["files"]]
    resp = client.get("/api/v1/parsers/items/latest/files/output.txt?format=json")
    assert resp.json["run_id"] == newest.id and len(resp.json["items"]) == 2
    ranged = client.get(
        "/api/v1/parsers/items/latest/files/output.txt", headers={"Range": "bytes=0-0"}
    )
    assert ranged.status_code == 206 and ranged.data == b"{"
    assert client.get("/api/v1/parsers/fail/latest/files/output.txt").status_code == 404
    assert client.get("/api/v1/parsers/nope/latest/files/output.txt").status_code == 404
    assert client.get("/api/v1/parsers/items/latest/files/nope.txt").status_code == 404


def test_files_are_listed_with_download_urls(client, run: Run, sqlite_app: Flask) -> None:  # type: ignore[no-untyped-def]
    files = client.get(f"/api/v1/runs/{run.id}/files").json["files"]
    assert all(" " not in f["url"] for f in files)
    assert {f["name"] for f in files} == {"blob.bin", "output.txt", "run.log"}


def test_an_empty_file_has_no_object_and_downloads_empty(
    client, run: Run, sqlite_app: Flask
) -> None:  # type: ignore[no-untyped-def]
    """The script printed nothing: its log is recorded (size 0, the sha256 of nothing) but
    stores no object, and downloads as an empty file."""
    log = run.file("run.log")
    assert (log.size, log.sha256) == (0, hashlib.sha256(b"").hexdigest())
    storage = sqlite_app.extensions["parseq"].storage
    assert not storage.exists(log.storage_key)
    assert storage.exists(run.file("output.txt").storage_key)
    resp = client.get(f"/api/v1/runs/{run.id}/files/run.log")
    assert (resp.status_code, resp.data, resp.headers["Content-Length"]) == (200, b"", "0")
    ranged = client.get(f"/api/v1/runs/{run.id}/files/run.log", headers={"Range": "bytes=0-"})
    assert ranged.status_code == 416
