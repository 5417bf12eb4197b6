"""Result files over the REST API: a run's files and the latest completed run's, listed and
downloaded (served by :mod:`parseq.web.files`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, jsonify

from parseq.core.errors import NotFound
from parseq.db.models import Run, RunStatus, db
from parseq.services import runs
from parseq.web.files import serve, stored_file

bp = Blueprint("api_files", __name__, url_prefix="/api/v1")


def file_url(run_id: int, name: str) -> str:
    return f"{bp.url_prefix}/runs/{run_id}/files/{quote(name)}"


def files_json(run: Run) -> list[dict[str, Any]]:
    return [{**f.to_dict(), "url": file_url(run.id, f.name)} for f in run.files]


def latest_completed(parser_name: str) -> Run:
    """The parser's newest completed run (walks the ``(parser_id, id)`` index backwards)."""
    parser = runs.get_parser(parser_name)
    run = db.session.execute(
        db.select(Run)
        .where(Run.parser_id == parser.id, Run.status == RunStatus.COMPLETED)
        .order_by(Run.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if run is None:
        raise NotFound(f"parser {parser_name!r} has no completed run yet", parser=parser_name)
    return run


@bp.get("/runs/<int:run_id>/files")
def list_files(run_id: int) -> Response:
    return jsonify({"run_id": run_id, "files": files_json(runs.get_run(run_id))})


@bp.get("/runs/<int:run_id>/files/<path:name>", merge_slashes=False)
def download_file(run_id: int, name: str) -> Response:
    return serve(stored_file(runs.get_run(run_id), name))


@bp.get("/parsers/<name>/latest/files")
def list_latest_files(name: str) -> Response:
    run = latest_completed(name)
    return jsonify({"run_id": run.id, "files": files_json(run)})


@bp.get("/parsers/<name>/latest/files/<path:file>", merge_slashes=False)
def download_latest_file(name: str, file: str) -> Response:
    return serve(stored_file(latest_completed(name), file))
