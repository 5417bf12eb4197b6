"""The admin's "Reset state" button on a parser's page (the rule: ``state.reset_state``)."""

from __future__ import annotations

from flask import flash, redirect, url_for
from werkzeug.wrappers import Response

from parseq.core.errors import ParseqError
from parseq.db.models import Parser, db
from parseq.services import state


def reset_view(parser_id: int) -> Response:
    """Reset the parser's state; back to its page with what happened."""
    parser = db.get_or_404(Parser, parser_id)
    try:
        state.reset_state(parser)
    except ParseqError as exc:
        flash(exc.message, "error")
    else:
        flash(f"State of {parser.name} reset: state, checkpoints and page cache.", "success")
    return redirect(url_for(".details_view", id=parser_id))
