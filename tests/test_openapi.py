"""The generated OpenAPI document: it matches the routes, its schemas are closed, every answer
conforms to it, and the docs page works offline."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient

from parseq.db.models import Parser, Run, db
from parseq.web.api.parser_schemas import ParserCreateSchema, ParserSchema
from parseq.web.api.schemas import RunSchema
from parseq.worker import execution
from tests.conftest import add_parser, api_client

CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
#: Served beside the API, not part of it: the document itself, its page and the page's files.
NOT_OPERATIONS = {"/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/"}


def api_routes(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI-style path, method) of every route under /api/v1 but the docs' own."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.endpoint == "api_docs.static":
            continue
        path = CONVERTER.sub(r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    return routes


def document(app: Flask) -> dict[str, Any]:
    resp = api_client(app, auth=False).get("/api/v1/openapi.json")
    assert resp.status_code == 200
    return resp.json


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    ]


def test_every_route_is_documented_and_every_documented_route_exists(sqlite_app: Flask) -> None:
    doc = document(sqlite_app)
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method) for path, method, _op in operations(doc)}
    routes = {r for r in api_routes(sqlite_app) if r[0] not in NOT_OPERATIONS}
    assert documented == routes


def test_path_parameters_are_declared(sqlite_app: Flask) -> None:
    for path, item in document(sqlite_app)["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert names == declared, path


def test_every_schema_reference_resolves(sqlite_app: Flask) -> None:
    doc = document(sqlite_app)
    refs = set(re.findall(r"#/components/schemas/(\w+)", str(doc)))
    assert refs and refs <= set(doc["components"]["schemas"])


def test_every_object_schema_is_closed(sqlite_app: Flask) -> None:
    """No schema allows properties it does not declare (drift would pass unseen)."""
    schemas = document(sqlite_app)["components"]["schemas"]
    open_ = [
        n
        for n, s in schemas.items()
        if "properties" in s and s.get("additionalProperties") is not False
    ]
    assert open_ == [] or open_ == ["PaginationMetadata"]  # flask-smorest's own, unused


def test_every_operation_documents_its_errors_and_content_types(sqlite_app: Flask) -> None:
    doc = document(sqlite_app)
    for path, method, op in operations(doc):
        codes = set(op["responses"])
        public = op.get("security") == []
        if not public:
            assert {"401", "429"} <= codes, (method, path)
        if method in ("post", "patch", "delete"):
            assert "403" in codes, (method, path)
        for code, response in op["responses"].items():
            if code not in ("204", "302"):  # no body by definition
                assert response.get("content"), (method, path, code)
            if code.startswith(("4", "5")) and path != "/api/v1/health":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}


def test_request_bodies_come_from_the_validating_schemas(sqlite_app: Flask) -> None:
    schemas = document(sqlite_app)["components"]["schemas"]
    create = schemas["ParserCreate"]
    assert set(create["properties"]) == set(ParserCreateSchema().fields)
    assert create["required"] == ["name", "path"]
    assert create["additionalProperties"] is False
    assert "required" not in schemas["ParserUpdate"]


def test_the_wait_maximum_is_the_configured_one(make_config: Any) -> None:
    from parseq.web.app import create_app

    app = create_app(make_config(max_wait_s=7))
    op = document(app)["paths"]["/api/v1/parsers/{name}/runs"]["post"]
    wait = next(p for p in op["parameters"] if p["name"] == "wait")
    assert wait["schema"]["maximum"] == 7


def test_docs_page_is_swagger_ui_from_local_files(sqlite_app: Flask) -> None:
    client = api_client(sqlite_app, auth=False)
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/v1/openapi.json" in html and "SwaggerUIBundle" in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # no CDN
    for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
        resp = client.get(asset)
        assert resp.status_code == 200 and resp.content_length, asset
    nonce = re.search(r'<script nonce="([^"]+)"', html)
    assert nonce and f"'nonce-{nonce.group(1)}'" in page.headers["Content-Security-Policy"]


def test_unknown_query_parameters_are_400(sqlite_app: Flask) -> None:
    client = api_client(sqlite_app)
    resp = client.get("/api/v1/runs?staus=error")
    assert resp.status_code == 400
    assert "'staus'" in resp.json["error"]["message"]
    assert client.get("/api/v1/runs?=false").status_code == 400
    assert client.get("/api/v1/runs?status=error&limit=5").status_code == 200
    assert client.get("/api/v1/health?verbose=1").status_code == 400


# --- answers conform to the document ----------------------------------------------------------


class Conformance:
    """Validates answers against the document's response schemas (JSON Schema 2020-12, as
    OpenAPI 3.1 is), with every ``additionalProperties: false`` enforced."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.checked = 0

    def schema(self, path: str, method: str, status: int) -> dict[str, Any]:
        op = self.doc["paths"][path][method]
        content = op["responses"][str(status)]["content"]["application/json"]
        return {**content["schema"], "components": self.doc["components"]}

    def check(self, path: str, method: str, status: int, body: Any) -> None:
        jsonschema.validate(
            body, self.schema(path, method, status), jsonschema.Draft202012Validator
        )
        self.checked += 1

    def call(self, client: FlaskClient, method: str, path: str, url: str, **kwargs: Any) -> Any:
        resp = client.open(url, method=method.upper(), **kwargs)
        assert resp.is_json, (method, url, resp.status_code)
        self.check(path, method, resp.status_code, resp.json)
        return resp.json


def _extra_field(body: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["undeclared"] = 1
    return changed


def test_answers_conform_and_an_undeclared_field_fails(sqlite_app: Flask) -> None:
    client = api_client(sqlite_app)
    conf = Conformance(document(sqlite_app))
    body = {"name": "items", "path": "items.py", "limits": {"memory_bytes": 2**30}}
    created = conf.call(client, "post", "/api/v1/parsers", "/api/v1/parsers", json=body)
    run = execution.run_now(db.session.execute(db.select(Parser)).scalar_one(), {"count": 2})
    run_id = run.id
    cases = [
        ("get", "/api/v1/parsers", "/api/v1/parsers"),
        ("get", "/api/v1/parsers/{name}", "/api/v1/parsers/items"),
        ("post", "/api/v1/parsers/{name}/disable", "/api/v1/parsers/items/disable"),
        ("get", "/api/v1/runs", "/api/v1/runs"),
        ("get", "/api/v1/runs/{run_id}", f"/api/v1/runs/{run_id}"),
        ("get", "/api/v1/runs/{run_id}/files", f"/api/v1/runs/{run_id}/files"),
        ("get", "/api/v1/parsers/{name}/latest/files", "/api/v1/parsers/items/latest/files"),
        ("get", "/api/v1/runs/{run_id}", "/api/v1/runs/9999"),
        ("post", "/api/v1/runs/{run_id}/cancel", f"/api/v1/runs/{run_id}/cancel"),
        ("get", "/api/v1/health", "/api/v1/health"),
    ]
    answers = [conf.call(client, method, path, url) for method, path, url in cases]
    assert conf.checked == len(cases) + 1
    # The same check refuses an answer with one field more, at the top and nested.
    with pytest.raises(jsonschema.ValidationError, match="undeclared"):
        conf.check("/api/v1/parsers", "post", 201, _extra_field(created))
    run_body = answers[4]
    nested = {**run_body, "progress": _extra_field(run_body["progress"])}
    with pytest.raises(jsonschema.ValidationError, match="undeclared"):
        conf.check("/api/v1/runs/{run_id}", "get", 200, nested)
    with pytest.raises(jsonschema.ValidationError, match="undeclared"):
        conf.check(
            "/api/v1/runs/{run_id}", "get", 404, {"error": _extra_field(answers[7]["error"])}
        )


def test_every_field_the_models_show_is_declared(sqlite_app: Flask) -> None:
    """A key added to ``to_dict`` without its schema field would be dropped from answers."""
    parser = add_parser("items", "items.py")
    run: Run = execution.run_now(parser, {"count": 1})
    assert set(parser.to_dict()) <= set(ParserSchema().fields)
    assert set(run.to_dict()) <= set(RunSchema().fields)
