"""The REST API under ``/api/v1``, on flask-smorest: one set of marshmallow schemas validates
each request, serializes each answer and writes the OpenAPI document (``/api/v1/openapi.json``,
shown by Swagger UI at ``/api/v1/docs``).

Every endpoint but ``/health`` and the docs needs an ``Authorization: Bearer <token>`` header
(:mod:`parseq.services.tokens`); every error answers ``{"error": {"code": ..., "message": ...}}``.
:func:`init_app` is the one place that registers the API's blueprints.

May import: ``parseq.services`` and below, and ``web``'s shared modules (``files``,
``throttle``, ``csrf``); never ``web.admin``. Nothing imports it but the app factory.
"""

from __future__ import annotations

from flask import Flask

from parseq.core.errors import ParseqError
from parseq.web import throttle
from parseq.web.api import code, files, meta, parsers, runs, state
from parseq.web.api.base import PREFIX, ParseqApi, parseq_error
from parseq.web.api.fields import configured_maximum, json_schema_extras
from parseq.web.api.schemas import JsonLinesSchema

BEARER = {"type": "http", "scheme": "bearer", "description": "an API token (parseq create-token)"}


def init_app(app: Flask) -> ParseqApi:
    """Register the API, its document and its docs page on ``app``."""
    config = app.extensions["parseq"].config
    app.config.update(
        API_TITLE="Parseq API",
        API_VERSION="1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX=PREFIX,
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": "Run and schedule web parsers; download their results."},
            "security": [{"bearerAuth": []}],
            "components": {"securitySchemes": {"bearerAuth": BEARER}},
        },
    )
    api = ParseqApi()
    api.init_app(app)
    converter = api.ma_plugin.converter
    converter.add_attribute_function(json_schema_extras)
    converter.add_attribute_function(configured_maximum(config))
    api.spec.components.schema("JsonLines", schema=JsonLinesSchema)
    # The one place the API's blueprints are registered: a new group is one line here.
    api.register_blueprint(parsers.bp)
    api.register_blueprint(runs.bp)
    api.register_blueprint(files.bp)
    api.register_blueprint(meta.bp)
    api.register_blueprint(state.bp)
    api.register_blueprint(code.bp)
    app.register_blueprint(meta.docs)
    app.register_error_handler(ParseqError, parseq_error)
    throttle.init_app(app)
    return api
