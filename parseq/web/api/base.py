"""What every API blueprint shares: the JSON error envelope, bearer-token auth, the request
parser, and the documented error answers.

A new group of endpoints is ``bp = api_blueprint("things", __name__)`` in its own module and one
``api.register_blueprint(bp)`` line in :func:`parseq.web.api.init_app`; its routes get auth, the
envelope and the query-parameter check from here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import flask_smorest
import marshmallow as ma
from flask import Response, current_app, jsonify, request
from flask_login import current_user
from flask_smorest import current_api
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from parseq.core.errors import (
    BadRequest,
    ParseqError,
    TooManyRequests,
    Unauthorized,
    ValidationError,
)
from parseq.services import tokens
from parseq.web import throttle
from parseq.web.csrf import csrf

PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: What each documented error status means, as the document says it.
ERROR_TEXT = {
    400: "malformed request: bad JSON, an unknown field or query parameter, a bad query value",
    401: "no valid API token",
    403: "the token is read-only",
    404: "not found",
    409: "conflicts with the current state",
    416: "range not satisfiable (Content-Range: bytes */SIZE)",
    422: "invalid values; error.fields maps each field to its message",
    429: "too many failed tokens from this address; Retry-After says when to retry",
    503: "a dependency (storage, broker, database) is unreachable; retry later",
}


class ErrorDetail(ma.Schema):
    """The ``error`` object: a stable code and a message, plus what the error names."""

    code = ma.fields.String(required=True, metadata={"example": "validation_error"})
    message = ma.fields.String(required=True)
    field = ma.fields.String(metadata={"description": "the first field at fault"})
    fields = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.String(),
        metadata={"description": "field -> message, for every field at fault"},
    )
    retry_after_s = ma.fields.Integer(metadata={"description": "429: seconds to wait"})
    run_id = ma.fields.Integer()
    parser = ma.fields.String()
    line = ma.fields.Integer(metadata={"description": "format=json: the line that is not JSON"})


class ErrorSchema(ma.Schema):
    """Every 4xx/5xx answer of the API."""

    error = ma.fields.Nested(ErrorDetail, required=True)


class ParseqApi(flask_smorest.Api):
    """flask-smorest's Api with Parseq's error envelope on every HTTP error under the API."""

    ERROR_SCHEMA = ErrorSchema
    # Each operation lists the errors it can answer; no catch-all ``default`` response.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def handle_http_exception(self, error: HTTPException) -> Any:
        if not request.path.startswith(PREFIX):
            return error.get_response()  # the admin and other HTML pages keep Flask's pages
        messages = (getattr(error, "data", None) or {}).get("messages")
        if messages is not None:
            return parseq_error(_arguments_error(messages))  # webargs: bad body or query
        code = (error.name or "error").lower().replace(" ", "_")
        resp = envelope(error.code or 500, code, error.description or error.name)
        for name, value in error.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp


def envelope(status: int, code: str, message: str, **extra: Any) -> Response:
    resp = jsonify({"error": {"code": code, "message": message, **extra}})
    resp.status_code = status
    return resp


def parseq_error(exc: ParseqError) -> Response:
    """Any :class:`ParseqError` as the envelope, with its structured fields."""
    resp = jsonify({"error": exc.to_dict()})
    resp.status_code = exc.status_code
    if isinstance(exc, TooManyRequests):
        resp.headers["Retry-After"] = str(exc.retry_after_s)
    return resp


def _flatten(messages: Any) -> str:
    if isinstance(messages, Mapping):
        return "; ".join(
            f"{k}: {_flatten(v)}" if k != "_schema" else _flatten(v) for k, v in messages.items()
        )
    if isinstance(messages, (list, tuple)):
        return "; ".join(_flatten(m) for m in messages)
    return str(messages)


def _arguments_error(messages: Mapping[str, Any]) -> ParseqError:
    """webargs' ``{location: {field: [messages]}}`` as Parseq's 400 or 422.

    Malformed requests (a body that is not an object, unknown body fields, bad query values)
    are 400 as they always were; well-formed but unacceptable values are 422 by field.
    """
    for location, errors in messages.items():
        if location in ("query", "querystring", "headers"):
            detail = "; ".join(f"{k!r}: {_flatten(v)}" for k, v in errors.items())
            return BadRequest(f"query parameter {detail}", field=next(iter(errors), None))
        if not isinstance(errors, Mapping) or "_schema" in errors:
            return BadRequest("request body must be a JSON object")
        unknown = sorted(k for k, v in errors.items() if v == ["Unknown field."])
        if unknown:
            return BadRequest(f"unknown field(s) in body: {', '.join(unknown)}")
        fields = {k: _flatten(v) for k, v in errors.items()}
        summary = "; ".join(f"{k}: {v}" for k, v in fields.items())
        return ValidationError(
            f"invalid request: {summary}", field=next(iter(fields)), fields=fields
        )
    return BadRequest("invalid request")


class ArgumentsParser(FlaskParser):
    """webargs' Flask parser, reading the body as JSON whatever its Content-Type says (as the
    API always did: ``curl -d`` sends form encoding), and an empty body as no body."""

    def load_json(self, req: Any, schema: ma.Schema) -> Any:
        data = req.get_data(cache=True)
        if not data.strip():
            return core.missing
        try:
            return json.loads(data)
        except ValueError:  # UnicodeDecodeError is one too
            raise BadRequest("request body is not valid JSON") from None


class ApiBlueprint(flask_smorest.Blueprint):
    """A blueprint of ``/api/v1`` routes, parsed by :class:`ArgumentsParser`."""

    ARGUMENTS_PARSER = ArgumentsParser()

    def route(self, rule: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
        """flask-smorest's ``route``; the view's name is its ``operationId`` (what a generated
        client names the call, and how Swagger UI links to it)."""
        register = super().route(rule, **options)

        def decorate(view: Callable[..., Any]) -> Any:
            name = options.get("endpoint") or view.__name__
            return register(self.doc(operationId=name)(view))

        return decorate

    def links(
        self, statuses: tuple[int, ...], field: str, targets: dict[str, str]
    ) -> Callable[[Callable[..., Any]], Any]:
        """Document OpenAPI links: the answer's ``field`` is the ``targets`` operations'
        parameter (operationId -> parameter name); clients and stateful tests follow them."""
        links = {
            op: {"operationId": op, "parameters": {param: f"$response.body#/{field}"}}
            for op, param in targets.items()
        }
        # Integer keys, as flask-smorest keys its responses: "201" would replace 201.
        return self.doc(responses={status: {"links": links} for status in statuses})

    def arguments(self, schema: Any, *, location: str = "json", **kwargs: Any) -> Any:
        """flask-smorest's ``arguments``; a bad query or header value is a 400 (the request
        is malformed), a bad body value a 422 (see :func:`_arguments_error`)."""
        if location != "json":
            kwargs.setdefault("error_status_code", 400)
        return super().arguments(schema, location=location, **kwargs)

    def errors(self, *codes: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Document the error answers of an operation, all as :class:`ErrorSchema`."""

        def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
            for code in sorted(set(codes), reverse=True):
                description = ERROR_TEXT.get(code, HTTPStatus(code).phrase)
                view = self.alt_response(code, schema=ErrorSchema, description=description)(view)
            return view

        return decorate


def api_blueprint(
    name: str, import_name: str, description: str, *, public: bool = False
) -> ApiBlueprint:
    """A blueprint under ``/api/v1`` whose routes need a bearer token (``public``: none)."""
    bp = ApiBlueprint(name, import_name, url_prefix=PREFIX, description=description)
    csrf.exempt(bp)  # bearer tokens, not cookies: no cross-site request can carry one
    if not public:
        bp.before_request(require_token)
    bp.before_request(refuse_unknown_query_params)
    return bp


def require_token() -> None:
    """Authenticate the request; a read-only token may only read. Failed tokens count per
    client address, as failed admin logins do."""
    write = request.method not in SAFE_METHODS
    header = request.headers.get("Authorization")
    if not write and header is None and current_user and current_user.is_authenticated:
        return  # the admin's own pages link to file downloads
    if header is None:  # no guess at a token: nothing to throttle
        tokens.authenticate(header, write=write)
        return
    address_key = throttle.key("token-address", request.remote_addr or "unknown")
    throttle.current().check(address_key)
    try:
        tokens.authenticate(header, write=write)
    except Unauthorized:
        throttle.current().fail(address_key)
        raise


_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def _documented_query_params() -> dict[tuple[str, str], frozenset[str]]:
    """(path, method) -> the query parameters the document declares, built once per app."""
    cached = current_app.extensions.get("parseq_api_query_params")
    if cached is not None:
        return cached
    spec = current_api.spec.to_dict()
    found = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            params = [*item.get("parameters", []), *op.get("parameters", [])]
            names = frozenset(p["name"] for p in params if p.get("in") == "query")
            found[(path, method)] = names
    current_app.extensions["parseq_api_query_params"] = found
    return found


def refuse_unknown_query_params() -> None:
    """A misspelt filter (``?staus=error``) is a 400, not silently ignored: the query
    parameters an operation accepts are the ones its document declares."""
    if request.url_rule is None or not request.args:
        return
    path = _CONVERTER.sub(r"{\1}", request.url_rule.rule)
    method = "get" if request.method == "HEAD" else request.method.lower()
    allowed = _documented_query_params()
    unknown = set(request.args) - allowed.get((path, method), frozenset())
    if unknown:
        names = ", ".join(repr(n) for n in sorted(unknown))
        raise BadRequest(f"unknown query parameter(s): {names}")


def auth_errors(*codes: int, write: bool = False) -> tuple[int, ...]:
    """The error codes of an operation behind a token: 401, 429, and 403 for a write."""
    return (*codes, 401, 429, *((403,) if write else ()))
