"""``/api/v1/health`` (no token: monitors call it) and the docs page, Swagger UI served from
the ``flask-swagger-ui`` package's bundled files (no CDN: Parseq runs offline)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, render_template

from parseq.web.api import health
from parseq.web.api.base import PREFIX, api_blueprint
from parseq.web.api.schemas import HealthSchema

bp = api_blueprint("api_health", __name__, "Is Parseq up?", public=True)

#: Swagger UI's JavaScript and CSS, as the flask-swagger-ui wheel ships them.
SWAGGER_UI_DIST = str(resources.files("flask_swagger_ui") / "dist")
docs = Blueprint(
    "api_docs",
    __name__,
    url_prefix=f"{PREFIX}/docs",
    static_folder=SWAGGER_UI_DIST,
    static_url_path="/assets",
)


@bp.get("/health")
@bp.doc(security=[])
@bp.response(200, HealthSchema, description="all dependencies up")
@bp.alt_response(503, schema=HealthSchema, description="one is down (see checks)")
def health_check() -> tuple[dict[str, Any], int]:
    """Database, broker and storage (with latency), workers, queue depth and the host."""
    return health.report(current_app._get_current_object())


@docs.get("")
@docs.get("/")
def docs_page() -> Response:
    """Swagger UI over ``openapi.json``; "Authorize" takes an API token."""
    page = render_template("parseq/api_docs.html", spec_url=f"{PREFIX}/openapi.json")
    return Response(page, content_type="text/html; charset=utf-8")
