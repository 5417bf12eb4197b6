"""The demo parsers in ``parsers/``, each run through the whole pipeline (API -> broker ->
worker -> sandboxed process -> storage) against a local stand-in for its site."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from parseq.core.config import Config
from tests.conftest import admin_client, api_client, running, wait_for_run
from tests.fixture_site import QUOTES_PER_PAGE, quote_text

REPO = Path(__file__).resolve().parent.parent
NO_DELAY = {"delay": 0, "backoff": 0.05}


@pytest.fixture
def demo_app(make_config: Callable[..., Config]) -> Iterator[Flask]:
    """The embedded stack (SQLite, in-memory broker, worker threads) with ``parsers/``."""
    config = make_config(parsers_dir=REPO / "parsers", heartbeat_interval_s=0.2)
    with running(config, sync_shipped=True) as app:
        yield app


def run_parser(app: Flask, name: str, **args: Any) -> dict[str, Any]:
    """Queue a run over the API, wait for it, and return it as the API shows it."""
    client = api_client(app)
    resp = client.post(f"/api/v1/parsers/{name}/runs", json={"args": args})
    assert resp.status_code == 202, resp.json
    wait_for_run(resp.json["id"])
    return client.get(f"/api/v1/runs/{resp.json['id']}").json


def file_text(app: Flask, run: dict[str, Any], name: str) -> str:
    resp = api_client(app).get(f"/api/v1/runs/{run['id']}/files/{name}")
    assert resp.status_code == 200, (name, [f["name"] for f in run["files"]])
    return resp.data.decode()


def test_demo_parsers_are_registered_with_descriptions(demo_app: Flask) -> None:
    parsers = {p["name"]: p for p in api_client(demo_app).get("/api/v1/parsers").json["parsers"]}
    assert {"currency_rates", "weather", "quotes", "page_title", "pi"} <= set(parsers)
    assert parsers["currency_rates"]["description"].startswith("Currency rates of the Central")


def test_currency_rates_from_the_cbr_daily_xml(demo_app: Flask, site: Any) -> None:
    run = run_parser(
        demo_app,
        "currency_rates",
        base_url=site.url("/scripts/XML_daily.asp"),
        date="2026-11-21",
        codes="USD,JPY",
        **NO_DELAY,
    )
    assert run["status"] == "completed", run["error"]
    assert file_text(demo_app, run, "output.txt").splitlines() == [
        "2026-11-21 1 USD = 81.1234 RUB (Доллар США)",
        "2026-11-21 100 JPY = 52.7000 RUB (Японских иен)",
    ]
    rates = json.loads(file_text(demo_app, run, "rates.json"))
    assert rates["date"] == "2026-11-21" and rates["base"] == "RUB"
    assert rates["rates"]["JPY"] == {
        "name": "Японских иен",
        "nominal": 100,
        "value": 52.7,
        "per_unit": 0.527,
    }
    assert rates["source"] == site.url("/scripts/XML_daily.asp?date_req=21%2F11%2F2026")
    assert site.hits["/scripts/XML_daily.asp?date_req=21%2F11%2F2026"] == 1


def test_weather_for_a_city_from_open_meteo_json(demo_app: Flask, site: Any) -> None:
    urls = {"base_url": site.url("/v1/forecast"), "geocoding_url": site.url("/v1/search")}
    run = run_parser(demo_app, "weather", city="Berlin", days=2, **urls, **NO_DELAY)
    assert run["status"] == "completed", run["error"]
    assert file_text(demo_app, run, "output.txt").splitlines() == [
        "Berlin, Germany (52.52, 13.41) at 2026-11-21T14:00: 4.3 °C, wind 12.6 km/h",
        "2026-11-21: 1.2..6.1 °C, precipitation 0.0 mm",
        "2026-11-22: 0.3..5.4 °C, precipitation 2.4 mm",
    ]
    assert json.loads(file_text(demo_app, run, "forecast.json"))["place"]["country_code"] == "DE"
    [forecast_hit] = [k for k in site.hits if k.startswith("/v1/forecast?")]
    assert "latitude=52.52437&longitude=13.41053" in forecast_hit
    assert "forecast_days=2" in forecast_hit

    nowhere = run_parser(demo_app, "weather", city="Nowhere", **urls, **NO_DELAY)
    assert nowhere["status"] == "error"
    assert "no city named 'Nowhere' found by" in nowhere["error"]


def _pages(output: str) -> list[int]:
    return [
        int(line.split("page ")[1].split(":")[0])
        for line in output.splitlines()
        if ": page " in line
    ]


def test_quotes_paginate_resume_from_the_cache_and_restart(demo_app: Flask, site: Any) -> None:
    args = {"base_url": site.url("/tag/{query}/page/{page}/"), "query": "love", "max_pages": 2}
    first = run_parser(demo_app, "quotes", **args, **NO_DELAY)
    assert first["status"] == "completed", first["error"]
    out = file_text(demo_app, first, "output.txt")
    assert _pages(out) == [1, 2]
    assert "next run starts at page 3" in out
    qhash = out.split("[")[1].split("]")[0]
    results = [
        json.loads(x) for x in file_text(demo_app, first, f"results/{qhash}.jsonl").splitlines()
    ]
    assert len(results) == 2 * QUOTES_PER_PAGE
    assert results[0] == {
        "query": "love",
        "page": 1,
        "text": quote_text("love", 1, 1),
        "author": "Author 1-1",
        "tags": ["love", "tag1"],
    }
    assert first["progress"] == {"done": 2.0, "total": 2.0, "message": "query 'love'"}

    # It ran in a venv built from its PEP 723 block, not in the bare base env pi runs in.
    base = run_parser(demo_app, "pi", digits=5)
    assert first["env_key"] and first["env_key"] != base["env_key"]
    env = demo_app.extensions["parseq"].config.envs_dir / first["env_key"]
    # Built from the lock stored with its code version (#21): pinned, with hashes.
    installed = json.loads((env / "parseq-env.json").read_text())["requirements"]
    assert [line.split(" ")[0] for line in installed][:1] == ["beautifulsoup4==4.15.0"]
    assert all("--hash=sha256:" in line for line in installed)
    assert first["code_version"] == 1
    assert list(env.glob("lib/python*/site-packages/bs4/__init__.py"))
    assert not list(env.glob("lib/python*/site-packages/lxml"))  # html.parser backend only

    second = run_parser(demo_app, "quotes", **args, **NO_DELAY)
    assert _pages(file_text(demo_app, second, "output.txt")) == [3, 4]
    third = run_parser(demo_app, "quotes", **args, **NO_DELAY)  # page 5 is the last
    out = file_text(demo_app, third, "output.txt")
    assert _pages(out) == [5] and "last page reached" in out
    done = run_parser(demo_app, "quotes", **args, **NO_DELAY)
    assert "all pages done" in file_text(demo_app, done, "output.txt")
    for page in range(1, 6):
        assert site.hits[f"/tag/love/page/{page}/"] == 1  # never fetched twice

    again = run_parser(demo_app, "quotes", **args, restart=True, **NO_DELAY)
    assert _pages(file_text(demo_app, again, "output.txt")) == [1, 2]
    assert site.hits["/tag/love/page/1/"] == 1  # page 1 again, from the page cache

    # Another query paginates on its own, in its own results file; ?page=N listings work too.
    other = run_parser(
        demo_app,
        "quotes",
        base_url=site.url("/search?q={query}&page={page}"),
        query="life",
        **NO_DELAY,
    )
    out = file_text(demo_app, other, "output.txt")
    assert _pages(out) == [1, 2] and qhash not in out
    assert site.hits["/search?q=life&page=1"] == 1


def test_page_title_survives_two_500s(demo_app: Flask, site: Any) -> None:
    site.script("/flaky", [500, 500])
    run = run_parser(demo_app, "page_title", url=site.url("/flaky"), **NO_DELAY)
    assert run["status"] == "completed", run["error"]
    assert file_text(demo_app, run, "output.txt") == "Parsing & Scheduling — a guide\n"
    assert json.loads(file_text(demo_app, run, "title.json"))["status"] == 200
    assert site.hits["/flaky"] == 3


def test_a_404_errors_the_run_naming_the_url(demo_app: Flask, site: Any) -> None:
    url = site.url("/gone")
    run = run_parser(demo_app, "page_title", url=url, **NO_DELAY)
    assert run["status"] == "error"
    assert f"FetchError: GET {url} failed: HTTP 404 Not Found" in run["error"]
    assert site.hits["/gone"] == 1


def test_pi_progress_shows_on_the_run_while_it_runs(demo_app: Flask) -> None:
    client = api_client(demo_app)
    resp = client.post(
        "/api/v1/parsers/pi/runs", json={"args": {"digits": 300, "steps": 10, "delay": 0.3}}
    )
    run_id = resp.json["id"]
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = client.get(f"/api/v1/runs/{run_id}").json
        if run["status"] != "running" and run["status"] != "pending":
            break
        if run["status"] == "running" and run["progress"]["done"] is not None:
            seen.append(run["progress"])
        time.sleep(0.1)
    assert run["status"] == "completed", run["error"]
    midway = [p for p in seen if 0 < p["done"] < 10]
    assert midway, seen
    assert all(p["total"] == 10 and p["message"] == "pi to 300 digits" for p in midway)
    assert run["progress"] == {"done": 10.0, "total": 10.0, "message": "pi to 300 digits"}
    steps = [json.loads(x) for x in file_text(demo_app, run, "steps.jsonl").splitlines()]
    assert [s["digits"] for s in steps] == list(range(30, 301, 30))
    assert file_text(demo_app, run, "output.txt") == steps[-1]["pi"] + "\n"
    assert "progress.json" not in {f["name"] for f in run["files"]}


def test_the_sdk_reaches_the_parsers_bare_virtualenv(demo_app: Flask) -> None:
    """Demo parsers without requirements (all but quotes) run in the shared bare env, which has
    neither Flask nor Parseq; the SDK comes on PYTHONPATH."""
    run = run_parser(demo_app, "pi", digits=20)
    assert run["status"] == "completed", run["error"]
    assert file_text(demo_app, run, "output.txt") == "3.14159265358979323846\n"
    python = demo_app.extensions["parseq"].config.envs_dir / run["env_key"] / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import flask"], capture_output=True, timeout=30)
    assert probe.returncode != 0  # really bare


def test_admin_run_pages_show_the_progress(demo_app: Flask) -> None:
    run = run_parser(demo_app, "pi", digits=40, steps=4)
    assert run["status"] == "completed", run["error"]
    client = admin_client(demo_app)
    listing = client.get("/admin/runs/")
    assert listing.status_code == 200
    assert "4/4 (100%) pi to 40 digits" in listing.data.decode()
    details = client.get(f"/admin/runs/details/?id={run['id']}")
    assert "4/4 (100%) pi to 40 digits" in details.data.decode()
