"""``/api/v1`` result files: a run's list and downloads (``Range``, presigned S3 redirects,
``?format=json`` for JSON Lines, ``?format=html`` for notebooks), and the same for a parser's
latest completed run. The responses are built by :mod:`parseq.web.files`."""

from __future__ import annotations

from typing import Any

from flask import Response

from parseq.core.errors import NotFound
from parseq.db.models import Run, RunStatus, db
from parseq.services import runs
from parseq.web.api.base import api_blueprint, auth_errors
from parseq.web.api.bodies import files_json
from parseq.web.api.schemas import DownloadQuery, FileListSchema, RangeHeader
from parseq.web.files import serve, stored_file

bp = api_blueprint("api_files", __name__, "Result files of runs")

_BYTES = {"schema": {"type": "string", "format": "binary"}}
#: The types a download is served with (``parseq.web.files``): by the
#: file's extension; ``*/*`` stands for the other extensions' types (``mimetypes``).
DOWNLOAD_RESPONSES = {
    "200": {
        "description": "the file (by its extension's type; format=json: JSON Lines as a "
        "JSON document; format=html: a notebook as a sandboxed page)",
        "headers": {
            "Content-Disposition": {"schema": {"type": "string"}},
            "ETag": {"schema": {"type": "string"}},
            "Accept-Ranges": {"schema": {"type": "string"}},
        },
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "application/x-ipynb+json": {"schema": {"type": "object"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/JsonLines"}},
            "text/html": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
            "application/octet-stream": _BYTES,
            "*/*": _BYTES,
        },
    },
    "206": {
        "description": "the byte range the Range header asked for",
        "headers": {"Content-Range": {"schema": {"type": "string"}}},
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/octet-stream": _BYTES,
            "*/*": _BYTES,
        },
    },
    "302": {
        "description": "to a presigned S3 URL (PARSEQ_S3_PRESIGN=true)",
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
}


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
@bp.response(200, FileListSchema)
@bp.errors(*auth_errors(404))
def list_files(run_id: int) -> dict[str, Any]:
    """A run's stored files."""
    return {"run_id": run_id, "files": files_json(runs.get_run(run_id))}


@bp.get("/runs/<int:run_id>/files/<path:name>", merge_slashes=False)
@bp.arguments(DownloadQuery, location="query")
@bp.arguments(RangeHeader, location="headers")
@bp.doc(responses=DOWNLOAD_RESPONSES)
@bp.errors(*auth_errors(400, 404, 416, 422, 503))
def download_file(
    query: dict[str, Any], _range: dict[str, Any], run_id: int, name: str
) -> Response:
    """Download a run's file (the name may contain ``/``)."""
    return serve(stored_file(runs.get_run(run_id), name))


@bp.get("/parsers/<name>/latest/files")
@bp.response(200, FileListSchema)
@bp.errors(*auth_errors(404))
def list_latest_files(name: str) -> dict[str, Any]:
    """The files of the parser's latest completed run."""
    run = latest_completed(name)
    return {"run_id": run.id, "files": files_json(run)}


@bp.get("/parsers/<name>/latest/files/<path:file>", merge_slashes=False)
@bp.arguments(DownloadQuery, location="query")
@bp.arguments(RangeHeader, location="headers")
@bp.doc(responses=DOWNLOAD_RESPONSES)
@bp.errors(*auth_errors(400, 404, 416, 422, 503))
def download_latest_file(
    query: dict[str, Any], _range: dict[str, Any], name: str, file: str
) -> Response:
    """Download a file of the parser's latest completed run."""
    return serve(stored_file(latest_completed(name), file))
