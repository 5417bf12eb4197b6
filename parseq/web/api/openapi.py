"""The OpenAPI 3.1 document of ``/api/v1`` and a docs page that renders it without a CDN.

Request bodies come from :mod:`parseq.web.api.schemas`, the same table that validates requests; a
test checks that every route of the app is documented here and every documented path exists.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from parseq.db.models import NotebookEngine, ParserKind, RunStatus, RunTrigger
from parseq.web.api import schemas

NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "malformed request",
        401: "no valid API token",
        403: "read-only token",
        404: "not found",
        409: "conflict with the current state",
        416: "range not satisfiable",
        422: "invalid values (field-level messages in error.fields)",
        429: "too many failed tokens from this address (Retry-After says how long to wait)",
        503: "a dependency is down",
    }
    if 401 in codes:  # wherever a token is checked, failed ones are throttled
        codes = (*codes, 429)
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def _param(name: str, where: str, schema: dict[str, Any], description: str = "") -> dict:
    param = {"name": name, "in": where, "schema": schema, "description": description}
    if where == "path":
        param["required"] = True
    return param


PARSER_NAME = _param("name", "path", {"type": "string"}, "parser name")
RUN_ID = _param("run_id", "path", {"type": "integer"}, "run id")
FILE_NAME = _param("name", "path", {"type": "string"}, "file name, may contain /")
FORMAT = _param(
    "format",
    "query",
    {"type": "string", "enum": ["raw", "json", "html"]},
    "json: JSON Lines as JSON; html: a .ipynb rendered as a sandboxed page",
)
RANGE = _param("Range", "header", {"type": "string"}, "bytes=START-END (one range)")

DOWNLOAD_RESPONSES = {
    "200": {
        "description": "the file's bytes (format=html: the notebook as a page)",
        "content": {
            "application/octet-stream": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}},
        },
    },
    "206": {
        "description": "the requested byte range",
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    },
    "302": {"description": "redirect to a presigned S3 URL (PARSEQ_S3_PRESIGN=true)"},
    **_errors(400, 401, 404, 416, 422),
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            }
        },
    },
    "File": {
        "type": "object",
        "required": ["name", "size", "sha256", "url"],
        "properties": {
            "name": {"type": "string"},
            "size": {"type": "integer"},
            "sha256": {"type": "string"},
            "url": {"type": "string"},
        },
    },
    "FileList": {
        "type": "object",
        "required": ["run_id", "files"],
        "properties": {
            "run_id": {"type": "integer"},
            "files": {"type": "array", "items": _ref("File")},
        },
    },
    "Run": {
        "type": "object",
        "required": ["id", "parser", "status", "trigger", "args", "files", "url"],
        "properties": {
            "id": {"type": "integer"},
            "parser": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in RunStatus]},
            "trigger": {"type": "string", "enum": [t.value for t in RunTrigger]},
            "args": {"type": "object"},
            "positional": {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
            "attempt": {"type": "integer"},
            "queued_at": {"type": "string", "format": "date-time"},
            "started_at": NULLABLE_TIME,
            "finished_at": NULLABLE_TIME,
            "duration_s": {"type": ["number", "null"]},
            "exit_code": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "progress": {
                "type": "object",
                "properties": {
                    "done": {"type": ["number", "null"]},
                    "total": {"type": ["number", "null"]},
                    "message": {"type": ["string", "null"]},
                },
            },
            "worker_id": {"type": ["string", "null"]},
            "heartbeat_at": NULLABLE_TIME,
            "env_key": {"type": ["string", "null"]},
            "code_version": {"type": ["integer", "null"], "description": "the code it ran"},
            "warnings": {
                "type": "array",
                "items": {"type": "string"},
                "description": "files not stored or renamed; no result at all",
            },
            "files": {"type": "array", "items": _ref("File")},
            "url": {"type": "string"},
            "notifications": {
                "type": "array",
                "items": _ref("Delivery"),
                "description": "GET /runs/{run_id} only: the notifications of its end",
            },
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["id", "event", "channel", "target", "status", "attempts"],
        "properties": {
            "id": {"type": "integer"},
            "event": {"type": "string"},
            "channel": {"type": "string", "enum": ["webhook", "email"]},
            "target": {"type": "string", "description": "webhook host or mail addresses"},
            "status": {
                "type": "string",
                "enum": ["pending", "held", "sent", "failed", "digested"],
            },
            "attempts": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
            "created_at": NULLABLE_TIME,
            "sent_at": NULLABLE_TIME,
        },
    },
    "RunList": {
        "type": "object",
        "required": ["runs", "next_cursor"],
        "properties": {
            "runs": {"type": "array", "items": _ref("Run")},
            "next_cursor": {"type": ["integer", "null"]},
        },
    },
    "Parser": {
        "type": "object",
        "required": ["name", "kind", "path", "enabled"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "kind": {"type": "string", "enum": [k.value for k in ParserKind]},
            "path": {"type": "string", "description": "empty: uploaded code only"},
            "code_version": {"type": ["integer", "null"], "description": "current version"},
            "requirements": {"type": "string"},
            "engine": {"type": "string", "enum": [e.value for e in NotebookEngine]},
            "default_args": {"type": "object"},
            "default_positional": {
                "type": "array",
                "items": {"type": ["string", "number", "boolean"]},
            },
            "secrets": {"type": "array", "items": {"type": "string"}, "description": "names"},
            "timeout_s": {"type": ["number", "null"]},
            "max_retries": {"type": "integer"},
            "enabled": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "schedule": {"type": ["object", "null"], "description": "as set in ParserCreate"},
            "notifications": {
                "type": ["object", "null"],
                "description": "own settings (webhook by host, webhook_secret_set); null: "
                "they do not decrypt with the configured keys",
            },
            "next_run_at": NULLABLE_TIME,
            "next_fire_times": {"type": "array", "items": {"type": "string"}},
            "skipped": {"type": "array", "items": {"type": "object"}},
            "last_run": {"oneOf": [_ref("Run"), {"type": "null"}]},
            "warnings": {
                "type": "array",
                "items": {"type": "string"},
                "description": "on create/update: notebook syntax the fast engine refuses",
            },
        },
    },
    "ParserList": {
        "type": "object",
        "required": ["parsers"],
        "properties": {"parsers": {"type": "array", "items": _ref("Parser")}},
    },
    "ParserCreate": schemas.parser_body_schema(create=True),
    "ParserUpdate": schemas.parser_body_schema(create=False),
    "RunCreate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "args": {"type": "object", "description": "overlay on default_args"},
            "positional": {
                **schemas.POSITIONAL_SCHEMA,
                "description": "after the options in argv; default: default_positional",
            },
        },
    },
    "JsonLines": {
        "type": "object",
        "required": ["run_id", "file", "items"],
        "properties": {
            "run_id": {"type": "integer"},
            "file": {"type": "string"},
            "items": {"type": "array", "items": {}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "checks", "queue", "workers", "host"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "down"]},
            "checks": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["ok", "latency_ms"],
                    "properties": {
                        "ok": {"type": "boolean"},
                        "latency_ms": {"type": "number"},
                        "error": {"type": "string"},
                    },
                },
            },
            "queue": {"type": "object"},
            "workers": {"type": "array", "items": {"type": "object"}},
            "workers_alive": {"type": "integer"},
            "host": {"type": "object"},
        },
    },
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _body(name: str) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": _ref(name)}}}


PUBLIC = {"security": []}
#: Documented by flask-smorest (``parseq.api_code``); listed here until #23 generates it all.
CODE_VERSION = {"type": "object", "description": "a code version (parseq.api_code)"}
CODE_MEDIA = ("text/x-python", "application/x-ipynb+json", "application/zip", "application/gzip")
CODE_BODY = {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in CODE_MEDIA}}

PATHS: dict[str, dict[str, Any]] = {
    "/parsers/{name}/code": {
        "parameters": [PARSER_NAME],
        "put": _op(
            "Upload a parser's code as a new version (creates the parser if needed)",
            {
                "200": _json(CODE_VERSION, "a new version, or the current one unchanged"),
                "201": _json(CODE_VERSION, "the parser was created"),
                "413": _json(_ref("Error"), "over PARSEQ_CODE_MAX_BYTES"),
                **_errors(400, 401, 403, 422),
            },
            requestBody={**CODE_BODY, "required": True},
        ),
        "get": _op(
            "Download the current code, or a version",
            {"200": {"description": "the code", **CODE_BODY}, **_errors(400, 401, 404, 422)},
            parameters=[_param("version", "query", {"type": "integer", "minimum": 1})],
        ),
    },
    "/parsers/{name}/code/versions": {
        "parameters": [PARSER_NAME],
        "get": _op(
            "The parser's code versions, newest first",
            {"200": _json({"type": "object"}, "versions"), **_errors(400, 401, 404)},
        ),
    },
    "/parsers": {
        "get": _op("List parsers", {"200": _json(_ref("ParserList"), "parsers"), **_errors(401)}),
        "post": _op(
            "Register a parser (secrets are write-only)",
            {"201": _json(_ref("Parser"), "created"), **_errors(400, 401, 403, 409, 422)},
            requestBody={**_body("ParserCreate"), "required": True},
        ),
    },
    "/parsers/{name}": {
        "parameters": [PARSER_NAME],
        "get": _op(
            "A parser with its last run", {"200": _json(_ref("Parser"), "ok"), **_errors(401, 404)}
        ),
        "patch": _op(
            "Change some fields of a parser",
            {"200": _json(_ref("Parser"), "ok"), **_errors(400, 401, 403, 404, 409, 422)},
            requestBody=_body("ParserUpdate"),
        ),
        "delete": _op(
            "Delete a parser, its runs and their files (409 while runs are active)",
            {"200": _json({"type": "object"}, "deleted"), **_errors(400, 401, 403, 404, 409)},
            parameters=[_param("cascade", "query", {"type": "boolean"}, "cancel active runs")],
        ),
    },
    "/parsers/{name}/enable": {
        "parameters": [PARSER_NAME],
        "post": _op(
            "Enable a parser", {"200": _json(_ref("Parser"), "ok"), **_errors(401, 403, 404)}
        ),
    },
    "/parsers/{name}/disable": {
        "parameters": [PARSER_NAME],
        "post": _op(
            "Disable a parser", {"200": _json(_ref("Parser"), "ok"), **_errors(401, 403, 404)}
        ),
    },
    "/parsers/{name}/runs": {
        "parameters": [PARSER_NAME],
        "post": _op(
            "Start a run; with ?wait=S wait up to S seconds for it to finish",
            {
                "200": _json(_ref("Run"), "the run finished within wait"),
                "202": _json(_ref("Run"), "queued (or still running after wait)"),
                **_errors(400, 401, 403, 404, 422),
            },
            parameters=[
                _param("wait", "query", {"type": "number", "minimum": 0}, "seconds, <= max")
            ],
            requestBody=_body("RunCreate"),
        ),
    },
    "/parsers/{name}/latest/files": {
        "parameters": [PARSER_NAME],
        "get": _op(
            "Files of the latest completed run",
            {"200": _json(_ref("FileList"), "ok"), **_errors(401, 404)},
        ),
    },
    "/parsers/{name}/latest/files/{file}": {
        "parameters": [PARSER_NAME, _param("file", "path", {"type": "string"}, "file name")],
        "get": _op(
            "Download a file of the latest completed run",
            DOWNLOAD_RESPONSES,
            parameters=[FORMAT, RANGE],
        ),
    },
    "/runs": {
        "get": _op(
            "Runs newest first, filtered, keyset-paginated",
            {"200": _json(_ref("RunList"), "a page"), **_errors(400, 401, 404)},
            parameters=[
                _param("parser", "query", {"type": "string"}),
                _param("status", "query", {"type": "string", "enum": [s.value for s in RunStatus]}),
                _param(
                    "trigger", "query", {"type": "string", "enum": [t.value for t in RunTrigger]}
                ),
                _param("since", "query", {"type": "string", "format": "date-time"}, "queued >="),
                _param("until", "query", {"type": "string", "format": "date-time"}, "queued <"),
                _param("limit", "query", {"type": "integer", "minimum": 1}),
                _param("cursor", "query", {"type": "integer", "minimum": 1}, "next_cursor"),
            ],
        )
    },
    "/runs/{run_id}": {
        "parameters": [RUN_ID],
        "get": _op(
            "A run with its progress and files",
            {"200": _json(_ref("Run"), "ok"), **_errors(401, 404)},
        ),
    },
    "/runs/{run_id}/cancel": {
        "parameters": [RUN_ID],
        "post": _op(
            "Cancel a pending or running run",
            {"200": _json(_ref("Run"), "cancelled"), **_errors(401, 403, 404, 409)},
        ),
    },
    "/runs/{run_id}/log": {
        "parameters": [RUN_ID],
        "get": _op(
            "What the run printed so far (secrets masked); live while it runs",
            {
                "200": {
                    "description": "log bytes from offset; X-Parseq-Log-Offset: where to go on",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_errors(400, 401, 404),
            },
            parameters=[
                _param("offset", "query", {"type": "integer", "minimum": 0}, "byte offset"),
                _param("follow", "query", {"type": "boolean"}, "stream until the run ends"),
            ],
        ),
    },
    "/runs/{run_id}/files": {
        "parameters": [RUN_ID],
        "get": _op("A run's files", {"200": _json(_ref("FileList"), "ok"), **_errors(401, 404)}),
    },
    "/runs/{run_id}/files/{name}": {
        "parameters": [RUN_ID, FILE_NAME],
        "get": _op("Download a run's file", DOWNLOAD_RESPONSES, parameters=[FORMAT, RANGE]),
    },
    "/health": {
        "get": _op(
            "Dependencies, workers, queue depth, host load (no token needed)",
            {"200": _json(_ref("Health"), "all up"), "503": _json(_ref("Health"), "one is down")},
            **PUBLIC,
        )
    },
    "/openapi.json": {
        "get": _op("This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, **PUBLIC)
    },
    "/docs": {
        "get": _op(
            "This document as a web page",
            {"200": {"description": "HTML", "content": {"text/html": {"schema": {}}}}},
            **PUBLIC,
        )
    },
}


_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


@functools.lru_cache(maxsize=256)
def query_params(rule: str, method: str) -> frozenset[str] | None:
    """The query parameters documented for a Flask rule (``/api/v1/runs/<int:run_id>``) and
    method; None when the operation is not documented."""
    path = _CONVERTER.sub(r"{\1}", rule).removeprefix("/api/v1")
    item = PATHS.get(path)
    op = item.get(method.lower()) if item else None
    if op is None:
        return None
    params = [*item.get("parameters", []), *op.get("parameters", [])]
    return frozenset(p["name"] for p in params if p["in"] == "query")


def document(max_wait_s: float | None = None) -> dict[str, Any]:
    """The document; ``max_wait_s`` (the configured limit) bounds the ``wait`` parameter."""
    paths = PATHS
    if max_wait_s is not None:
        run_op = {**PATHS["/parsers/{name}/runs"]["post"]}
        run_op["parameters"] = [
            _param("wait", "query", {"type": "number", "minimum": 0, "maximum": max_wait_s})
        ]
        paths = {**PATHS, "/parsers/{name}/runs": {**PATHS["/parsers/{name}/runs"], "post": run_op}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Parseq API",
            "version": "1",
            "description": "Run and schedule web parsers; download their results.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
