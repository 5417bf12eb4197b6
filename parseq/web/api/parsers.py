"""``/api/v1/parsers``: register, read, change, delete, enable and disable parsers."""

from __future__ import annotations

from typing import Any

from flask import current_app

from parseq.db.models import Parser, db
from parseq.services import parser_rules, runs
from parseq.services.registry import parser_warnings, set_enabled
from parseq.web.api.base import api_blueprint, auth_errors
from parseq.web.api.bodies import parser_json
from parseq.web.api.parser_schemas import (
    ParserCreateSchema,
    ParserListSchema,
    ParserSchema,
    ParserUpdateSchema,
)
from parseq.web.api.schemas import DeletedSchema, DeleteQuery

bp = api_blueprint("api_parsers", __name__, "Register, change and delete parsers")
#: Where a parser's name leads (OpenAPI links).
PARSER_LINKS = {
    "get_parser": "name",
    "update_parser": "name",
    "create_run": "name",
    "list_latest_files": "name",
    "delete_parser": "name",
}


def _config() -> Any:
    return current_app.extensions["parseq"].config


def _saved(parser: Parser, values: dict[str, Any]) -> dict[str, Any]:
    values = parser_rules.check_parser(_config(), values, parser if parser.id else None)
    parser = parser_rules.save_parser(parser, values)
    return {**parser_json(parser, True), "warnings": parser_warnings(_config(), parser)}


@bp.get("/parsers")
@bp.response(200, ParserListSchema)
@bp.errors(*auth_errors())
def list_parsers() -> dict[str, Any]:
    """List parsers by name."""
    parsers = db.session.execute(db.select(Parser).order_by(Parser.name)).scalars()
    return {"parsers": [parser_json(p) for p in parsers]}


@bp.post("/parsers")
@bp.arguments(ParserCreateSchema)
@bp.response(201, ParserSchema)
@bp.errors(*auth_errors(400, 409, 422, write=True))
@bp.links((201,), "name", PARSER_LINKS)
def create_parser(values: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Register a parser (secrets are write-only)."""
    body = _saved(Parser(), values)
    return body, 201, {"Location": f"{bp.url_prefix}/parsers/{body['name']}"}


@bp.get("/parsers/<name>")
@bp.response(200, ParserSchema)
@bp.errors(*auth_errors(404))
def get_parser(name: str) -> dict[str, Any]:
    """A parser with its last run, next fire times and last skipped occurrences."""
    return parser_json(runs.get_parser(name), detail=True)


@bp.patch("/parsers/<name>")
@bp.arguments(ParserUpdateSchema)
@bp.response(200, ParserSchema)
@bp.errors(*auth_errors(400, 404, 409, 422, write=True))
def update_parser(values: dict[str, Any], name: str) -> dict[str, Any]:
    """Change the given fields only; ``secrets``, ``limits`` and ``notifications`` are merged
    (a null value removes a secret or a notification setting)."""
    return _saved(runs.get_parser(name), values)


@bp.delete("/parsers/<name>")
@bp.arguments(DeleteQuery, location="query")
@bp.response(200, DeletedSchema)
@bp.errors(*auth_errors(400, 404, 409, 503, write=True))
def delete_parser(query: dict[str, Any], name: str) -> dict[str, Any]:
    """Delete a parser with its runs and their stored files. Refused (409) while a run is
    pending or running, unless ``cascade=true``: then those runs are cancelled first."""
    parser = runs.get_parser(name)
    storage = current_app.extensions["parseq"].storage
    count = runs.delete_parser(parser, storage, query.get("cascade", False))
    return {"deleted": name, "runs_deleted": count}


@bp.post("/parsers/<name>/enable")
@bp.response(200, ParserSchema)
@bp.errors(*auth_errors(404, write=True))
def enable_parser(name: str) -> dict[str, Any]:
    """Turn scheduled runs on."""
    return parser_json(set_enabled(runs.get_parser(name), True), detail=True)


@bp.post("/parsers/<name>/disable")
@bp.response(200, ParserSchema)
@bp.errors(*auth_errors(404, write=True))
def disable_parser(name: str) -> dict[str, Any]:
    """Turn scheduled runs off (runs by hand and over the API still work)."""
    return parser_json(set_enabled(runs.get_parser(name), False), detail=True)
