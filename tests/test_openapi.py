"""The OpenAPI document matches the routes: every route documented, every documented path real."""

from __future__ import annotations

import re

from flask import Flask

from parseq.web.api.openapi import document
from tests.conftest import api_client

CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def api_routes(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI-style path, method) of every route under /api/v1."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = CONVERTER.sub(r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    return routes


def documented(doc: dict) -> set[tuple[str, str]]:
    prefix = doc["servers"][0]["url"]
    return {
        (prefix + path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }


def test_every_route_is_documented_and_every_documented_route_exists(sqlite_app: Flask) -> None:
    doc = api_client(sqlite_app, auth=False).get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert documented(doc) == api_routes(sqlite_app)


def test_path_parameters_are_declared(sqlite_app: Flask) -> None:
    for path, item in document()["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert names == declared, path


def test_request_bodies_come_from_the_validating_schemas() -> None:
    from parseq.web.api.schemas import PARSER_FIELDS

    create = document()["components"]["schemas"]["ParserCreate"]
    assert set(create["properties"]) == set(PARSER_FIELDS)
    assert create["required"] == ["name", "path"]
    assert create["additionalProperties"] is False


def test_every_schema_reference_resolves() -> None:
    doc = document()
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', str(doc).replace("'", '"')))
    assert refs <= set(doc["components"]["schemas"])


def test_docs_page_needs_no_cdn(sqlite_app: Flask) -> None:
    page = api_client(sqlite_app, auth=False).get("/api/v1/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "openapi.json" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_unknown_query_parameters_are_400(sqlite_app: Flask) -> None:
    client = api_client(sqlite_app)
    resp = client.get("/api/v1/runs?staus=error")
    assert resp.status_code == 400
    assert "'staus'" in resp.json["error"]["message"]
    assert client.get("/api/v1/runs?=false").status_code == 400
    assert client.get("/api/v1/runs?status=error&limit=5").status_code == 200
    assert client.get("/api/v1/health?verbose=1").status_code == 400
