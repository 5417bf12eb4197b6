"""``DELETE /api/v1/parsers/<name>/state``: reset a parser's shared state, on flask-smorest.

Bearer tokens (read-only ones refused) and the JSON error envelope come from the rest of the
API (:mod:`parseq.web.api.api`), which checks every path under ``/api/v1``; the rule itself is
:func:`parseq.services.state.reset_state`, the admin's too.
"""

from __future__ import annotations

import marshmallow as ma
from flask import Flask, Response
from flask_smorest import Api, Blueprint

from parseq.services import runs, state

bp = Blueprint(
    "state_api",
    __name__,
    url_prefix="/api/v1",
    description="A parser's state (PARSEQ_STATE_DIR: state, checkpoints, page cache)",
)


class ErrorBody(ma.Schema):
    code = ma.fields.String(required=True)
    message = ma.fields.String(required=True)


class ErrorEnvelope(ma.Schema):
    """``{"error": {"code", "message", ...}}``, every error's body."""

    error = ma.fields.Nested(ErrorBody, required=True)


@bp.route("/parsers/<name>/state", methods=["DELETE"])
@bp.response(204, description="Reset: empty in storage now, on each worker at its next run.")
@bp.alt_response(401, schema=ErrorEnvelope, description="No valid API token.")
@bp.alt_response(403, schema=ErrorEnvelope, description="A read-only token.")
@bp.alt_response(404, schema=ErrorEnvelope, description="No parser of that name.")
@bp.alt_response(409, schema=ErrorEnvelope, description="A run holds the state (state_busy).")
@bp.alt_response(503, schema=ErrorEnvelope, description="Storage is unreachable.")
def reset_parser_state(name: str) -> Response:
    """Reset a parser's state: ``state``, checkpoints and page cache, on every worker."""
    state.reset_state(runs.get_parser(name))
    return Response(status=204)


def init_app(app: Flask) -> Api:
    """Register the blueprint with a flask-smorest ``Api`` that serves no document of its own
    (the API's document is :mod:`parseq.web.api.openapi`'s). Called before
    :func:`parseq.web.api.api.init_app`,
    whose JSON error handlers then replace the ones ``Api`` registers."""
    app.config.setdefault("API_TITLE", "Parseq")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    smorest = Api(app)
    smorest.register_blueprint(bp)
    return smorest
