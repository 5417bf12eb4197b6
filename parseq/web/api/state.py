"""``DELETE /api/v1/parsers/<name>/state``: reset a parser's shared state.

The rule is :func:`parseq.services.state.reset_state`, the admin's too.
"""

from __future__ import annotations

from flask import Response

from parseq.services import runs, state
from parseq.web.api.base import api_blueprint, auth_errors

bp = api_blueprint(
    "api_state", __name__, "A parser's state (PARSEQ_STATE_DIR: state, checkpoints, page cache)"
)


@bp.route("/parsers/<name>/state", methods=["DELETE"])
@bp.response(204, description="Reset: empty in storage now, on each worker at its next run.")
@bp.errors(*auth_errors(404, 409, 503, write=True))
def reset_parser_state(name: str) -> Response:
    """Reset a parser's state: ``state``, checkpoints and page cache, on every worker."""
    state.reset_state(runs.get_parser(name))
    return Response(status=204)
