"""Real-world scraper shapes run unchanged (issue 18): whatever they write where they run is
stored, a folder parser finds its own files, stdout is the output when nothing else is, and
flags, short options and positionals reach argv the way argparse expects them.

Each fixture scraper (``tests/fixtures/parsers/real_*``) is registered and run over the REST
API, every stored file downloaded, and compared byte for byte with the same script run directly
with ``python`` in a temp folder; embedded, and on PostgreSQL + RabbitMQ + a worker + S3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from parseq.core.config import Config
from parseq.db.models import Parser, RunStatus, db
from parseq.services.runs import get_parser
from parseq.worker import execution
from parseq.worker.collect import NO_RESULT, folder_of
from tests.conftest import (
    FIXTURE_PARSERS,
    admin_client,
    api_client,
    running,
    traversable,
    wait_for_run,
)
from tests.fixture_site import quote_text
from tests.test_cli import _env as cli_env
from tests.test_cli import _parseq as parseq_cli


@dataclass(frozen=True)
class Scraper:
    """A fixture scraper: how Parseq is asked to run it and the command line a user types."""

    path: str
    args: Callable[[str], dict[str, Any]]
    argv: Callable[[str], list[str]]
    positional: Callable[[str], list[Any]] = lambda _base: []
    #: The result files it must leave (besides output.txt and run.log).
    files: frozenset[str] = field(default_factory=frozenset)


SCRAPERS = {
    "cwd-csv": Scraper(
        "real_quotes_csv.py",
        lambda base: {"url": f"{base}/tag/love/page/1/"},
        lambda base: ["--url", f"{base}/tag/love/page/1/"],
        files=frozenset({"quotes.csv"}),
    ),
    "argparse-tables": Scraper(
        "real_tables_cli.py",
        lambda base: {
            "base-url": base,
            "pages": 2,
            "verbose": True,
            "dry-run": False,
            "output-folder": "tables",
        },
        lambda base: ["--base-url", base, "--pages", "2", "--verbose", "--output-folder", "tables"],
        files=frozenset({"tables/quotes.csv", "tables/authors.csv"}),
    ),
    "stdout-csv": Scraper(
        "real_stdout_csv.py", lambda base: {"base-url": base}, lambda base: ["--base-url", base]
    ),
    "folder": Scraper(
        "real_folder/main.py",
        lambda base: {"base-url": base},
        lambda base: ["--base-url", base],
        files=frozenset({"data/products.csv", "summary.txt"}),
    ),
    "positional": Scraper(
        "real_positional.py",
        lambda _base: {"limit": 2},
        lambda base: ["--limit", "2", base, "love", "love.json"],
        positional=lambda base: [base, "love", "love.json"],
        files=frozenset({"love.json"}),
    ),
    "short-options": Scraper(
        "real_short_opts.py",
        lambda base: {"m": 5, "r": True, "s": "love", "b": base},
        lambda base: ["-m", "5", "-r", "-s", "love", "-b", base],
        files=frozenset({"search_love.csv"}),
    ),
}


def register(client: FlaskClient, path: str) -> str:
    """Register the fixture over the API, as a user would; return its name."""
    name = f"{Path(path).parts[0].removesuffix('.py').replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    resp = client.post("/api/v1/parsers", json={"name": name, "path": path})
    assert resp.status_code == 201, resp.json
    return name


def run_over_api(
    client: FlaskClient, name: str, args: dict[str, Any], positional: list[Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"args": args}
    if positional is not None:
        body["positional"] = positional
    resp = client.post(f"/api/v1/parsers/{name}/runs?wait=60", json=body)
    assert resp.status_code == 200, resp.json
    return resp.json


def fetch(client: FlaskClient, run: dict[str, Any], name: str) -> bytes:
    """One stored file of the run, downloaded (the streamed response closed after)."""
    with client.get(f"/api/v1/runs/{run['id']}/files/{quote(name)}") as resp:
        assert resp.status_code == 200, name
        return resp.data


def downloaded(client: FlaskClient, run: dict[str, Any]) -> dict[str, bytes]:
    """Every stored file of the run but its log, downloaded."""
    files = {}
    for f in client.get(f"/api/v1/runs/{run['id']}/files").json["files"]:
        if f["name"] == "run.log":
            continue
        files[f["name"]] = fetch(client, run, f["name"])
    return files


def run_directly(python: Path, path: str, argv: list[str], where: Path) -> dict[str, bytes]:
    """The scraper run with ``python`` in a fresh folder (a folder parser's files copied in, as
    a user runs it from its folder): the files it left or changed, and its stdout."""
    script = FIXTURE_PARSERS / path
    if script.name == "main.py":
        shutil.copytree(script.parent, where)
    else:
        where.mkdir()
        shutil.copy(script, where)
    before = _files(where)
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    done = subprocess.run(
        [str(python), script.name, *argv], cwd=where, env=env, capture_output=True, check=True
    )
    after = _files(where)
    changed = {name: data for name, data in after.items() if before.get(name) != data}
    return {**changed, "output.txt": done.stdout}


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def check_scraper(app: Flask, site: Any, kind: str, tmp_path: Path) -> None:
    scraper = SCRAPERS[kind]
    client = api_client(app)
    name = register(client, scraper.path)
    run = run_over_api(client, name, scraper.args(site.base), scraper.positional(site.base))
    assert run["status"] == "completed", run["error"]
    assert run["warnings"] == []
    assert run["positional"] == scraper.positional(site.base)
    got = downloaded(client, run)
    assert scraper.files <= set(got)
    with app.app_context():
        python = execution.interpreter_for(get_parser(name))
    expected = run_directly(python, scraper.path, scraper.argv(site.base), tmp_path / "direct")
    assert got == expected
    assert all(got[name] for name in scraper.files)  # each one holds the scraped data


@pytest.mark.parametrize("kind", sorted(SCRAPERS))
def test_real_scrapers_run_unchanged_embedded(
    embedded_app: Flask, site: Any, kind: str, tmp_path: Path
) -> None:
    check_scraper(embedded_app, site, kind, tmp_path)


@pytest.mark.services
@pytest.mark.parametrize("kind", sorted(SCRAPERS))
def test_real_scrapers_run_unchanged_on_services(
    services_app: Flask,
    worker_process: Any,
    site: Any,
    kind: str,
    tmp_path: Path,
) -> None:
    check_scraper(services_app, site, kind, tmp_path)


def test_folder_parser_sees_its_files_and_keeps_only_what_it_changed(
    embedded_app: Flask, site: Any
) -> None:
    client = api_client(embedded_app)
    name = register(client, "real_folder/main.py")
    shown = client.get(f"/api/v1/parsers/{name}").json
    assert shown["path"] == "real_folder/main.py"
    run = run_over_api(client, name, {"base-url": site.base})
    assert run["status"] == "completed", run["error"]
    stored = {f["name"] for f in run["files"]}
    # config.json, template.txt, the package and data/.gitkeep came with the parser, unchanged.
    assert stored == {"data/products.csv", "summary.txt", "output.txt", "run.log"}
    with embedded_app.app_context():
        assert get_parser(name).runs[0].env_key is not None
    log = fetch(client, run, "run.log")
    assert b"Error" not in log


def test_stdout_is_the_output_only_when_the_parser_writes_none(
    embedded_app: Flask, site: Any
) -> None:
    client = api_client(embedded_app)
    printed = run_over_api(client, register(client, "real_stdout_csv.py"), {"base-url": site.base})
    out = fetch(client, printed, "output.txt")
    log = fetch(client, printed, "run.log")
    assert out.startswith(b"page,quote\r\n1,Quote 1 on page 1 about life & more\r\n")
    assert b"fetching page" not in out  # stderr stays in the log only
    assert b"fetching page 1" in log and b"page,quote" in log
    # The SDK's output() wins over stdout.
    own = run_over_api(client, register(client, "real_sdk_output.py"), {})
    assert fetch(client, own, "output.txt") == b"the result\n"
    assert b"chatter on stdout" in fetch(client, own, "run.log")


def test_warnings_name_what_was_not_stored_and_nothing_escapes(embedded_app: Flask) -> None:
    client = api_client(embedded_app)
    run = run_over_api(client, register(client, "real_misbehaving.py"), {})
    assert run["status"] == "completed", run["error"]
    names = {f["name"] for f in run["files"]}
    assert names == {"ok.csv", "bad__name.csv", "run.log~1", "output.txt", "run.log"}
    assert sorted(run["warnings"]) == sorted(
        [
            "bad\\r\\nname.csv: stored as bad__name.csv (its name has control characters)",
            "link.txt: a link, not stored",
            "pipe: not a regular file (a pipe, socket or device)",
            "run.log: stored as run.log~1 (its name is taken)",
        ]
    )
    # Every stored name downloads, the renamed one included.
    for name in names:
        fetch(client, run, name)
    assert fetch(client, run, "run.log~1") == b"my own log\n"
    out = fetch(client, run, "output.txt").decode()
    # The run's own folder is not the parser's to write: ../ is refused (sandbox user).
    assert out.count("refused ../") == 3, out
    config = embedded_app.extensions["parseq"].config
    assert not list(config.runs_dir.rglob("escaped.txt"))
    assert not (config.var_dir / "escaped.txt").exists()
    assert not any(n.endswith("escaped.txt") for n in names)


def test_a_run_with_no_result_at_all_says_so(embedded_app: Flask) -> None:
    client = api_client(embedded_app)
    run = run_over_api(client, register(client, "real_silent.py"), {})
    assert run["status"] == "completed"
    assert run["warnings"] == [NO_RESULT]
    page = _admin_run_page(embedded_app, run["id"])
    assert "no result files" in page
    listing = admin_client(embedded_app).get("/admin/runs/").data.decode()
    assert 'class="badge badge-warning run-warnings"' in listing and "1 warning<" in listing


def _admin_run_page(app: Flask, run_id: int) -> str:
    client = admin_client(app)
    resp = client.get(f"/admin/runs/details/?id={run_id}")
    assert resp.status_code == 200
    return resp.data.decode()


def test_positional_defaults_and_validation_over_the_api(embedded_app: Flask, site: Any) -> None:
    client = api_client(embedded_app)
    name = register(client, "real_positional.py")
    resp = client.patch(
        f"/api/v1/parsers/{name}", json={"default_positional": [site.base, "life", "life.json"]}
    )
    assert resp.status_code == 200, resp.json
    assert resp.json["default_positional"] == [site.base, "life", "life.json"]
    run = run_over_api(client, name, {})
    assert run["positional"] == [site.base, "life", "life.json"]
    assert {f["name"] for f in run["files"]} >= {"life.json"}
    for bad in ("x", [None], [{"a": 1}]):
        resp = client.post(f"/api/v1/parsers/{name}/runs", json={"positional": bad})
        assert resp.status_code == 422, resp.json
        assert resp.json["error"]["field"] == "positional"


def test_a_folder_parser_may_change_its_copies(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """The copies of a folder parser's files are the run's: it may rewrite one (then stored) and
    write into a shipped folder; the shipped files stay as they were."""
    (tmp_path / "parsers" / "own" / "data").mkdir(parents=True)
    parsers = traversable(tmp_path / "parsers")
    (parsers / "own" / "main.py").write_text(
        "open('state.txt', 'a').write('run\\n')\nopen('data/new.txt', 'w').write('n')\n"
    )
    (parsers / "own" / "state.txt").write_text("shipped\n")
    for p in [parsers, *parsers.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    with running(make_config(parsers_dir=parsers)) as app:
        client = api_client(app)
        run = run_over_api(client, register(client, "own/main.py"), {})
        assert run["status"] == "completed", run["error"]
        assert {f["name"] for f in run["files"]} == {
            "state.txt",
            "data/new.txt",
            "output.txt",
            "run.log",
        }
        assert fetch(client, run, "state.txt") == b"shipped\nrun\n"
        assert fetch(client, run, "data/new.txt") == b"n"
    assert (parsers / "own" / "state.txt").read_text() == "shipped\n"


def test_files_at_the_size_limit_are_named_in_the_warnings(embedded_app: Flask) -> None:
    client = api_client(embedded_app)
    name = register(client, "real_big_file.py")
    assert client.patch(f"/api/v1/parsers/{name}", json={}).status_code == 200
    with embedded_app.app_context():
        parser = get_parser(name)
        parser.max_file_bytes = 1000
        db.session.commit()
    run = run_over_api(client, name, {})
    assert run["status"] == "completed", run["error"]
    assert len(fetch(client, run, "big.bin")) == 1000
    assert fetch(client, run, "output.txt") == b"y" * 1000
    assert sorted(run["warnings"]) == [
        "big.bin: reached the file size limit (1000 bytes, PARSEQ_MAX_FILE_BYTES or the "
        "parser's limit): it may be cut short",
        "output.txt: reached the file size limit (1000 bytes, PARSEQ_MAX_FILE_BYTES or the "
        "parser's limit): it may be cut short",
    ]


def _post(client: FlaskClient, url: str, data: dict[str, str]) -> Any:
    return client.post(url, data={**data, "csrf_token": client.csrf_token})  # type: ignore[attr-defined]


def test_admin_registers_a_folder_parser_and_runs_it_with_positionals(
    embedded_app: Flask, site: Any
) -> None:
    client = admin_client(embedded_app)
    page = client.get("/admin/parsers/new/").data.decode()
    assert 'value="script:real_folder/main.py"' in page
    form = {
        "name": "folder-admin",
        "description": "",
        "script": "script:real_positional.py",
        "requirements": "",
        "default_args": '{"limit": 1}',
        "default_positional": f'["{site.base}", "love", "x.json"]',
        "secrets_set": "",
        "timeout_s": "30",
        "max_retries": "0",
    }
    assert _post(client, "/admin/parsers/new/", form).status_code == 302
    folder = {**form, "name": "folder-main", "script": "script:real_folder/main.py"}
    folder.update(default_args=f'{{"base-url": "{site.base}"}}', default_positional="[]")
    assert _post(client, "/admin/parsers/new/", folder).status_code == 302
    with embedded_app.app_context():
        positional, main = get_parser("folder-admin"), get_parser("folder-main")
        assert positional.default_positional == [site.base, "love", "x.json"]
        assert main.path == "real_folder/main.py"
        ids = {"positional": positional.id, "main": main.id}
    bad = _post(
        client, f"/admin/parsers/run/{ids['positional']}", {"args": "{}", "positional": "{"}
    )
    assert bad.status_code == 200 and "not valid JSON" in bad.data.decode()
    resp = _post(
        client,
        f"/admin/parsers/run/{ids['positional']}",
        {"args": "{}", "positional": f'["{site.base}", "life", "y.json"]'},
    )
    assert resp.status_code == 302
    resp = _post(client, f"/admin/parsers/run/{ids['main']}", {"args": "{}", "positional": "[]"})
    assert resp.status_code == 302
    with embedded_app.app_context():
        for parser_id in ids.values():
            run = wait_for_run(db.session.get(Parser, parser_id).runs[-1].id)
            assert run.status is RunStatus.COMPLETED, run.error
        run = db.session.get(Parser, ids["positional"]).runs[-1]
        assert run.positional == [site.base, "life", "y.json"]
        assert {f.name for f in run.files} == {"y.json", "output.txt", "run.log"}
        main_run = db.session.get(Parser, ids["main"]).runs[-1]
        assert {f.name for f in main_run.files} == {
            "data/products.csv",
            "summary.txt",
            "output.txt",
            "run.log",
        }


def test_parseq_run_takes_positionals_and_prints_warnings(tmp_path: Path, site: Any) -> None:
    env = cli_env(tmp_path, PARSEQ_PARSERS_DIR=str(FIXTURE_PARSERS))
    done = parseq_cli(
        "run", "real_positional", "--arg", "limit=1", *("--positional", site.base),
        *("--positional", "love", "--positional", "out.json"), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stored = tmp_path / "var" / "storage" / "runs" / "1" / "out.json"
    assert json.loads(stored.read_text()) == {"tag": "love", "quotes": [quote_text("love", 1, 1)]}
    silent = parseq_cli("run", "real_silent", env=env)
    assert silent.returncode == 0, silent.stderr
    assert f"warning: {NO_RESULT}\n" in silent.stderr


def test_only_a_folder_parser_gets_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "parsers"
    assert folder_of(root / "shop" / "main.py", root) == root / "shop"
    assert folder_of(root / "shop" / "nested" / "main.py", root) == root / "shop" / "nested"
    assert folder_of(root / "main.py", root) is None
    assert folder_of(root / "shop" / "other.py", root) is None
    # Every user's uploads share one folder: an upload named "main" must not get the others'.
    assert folder_of(root / "uploads" / "main.py", root) is None
