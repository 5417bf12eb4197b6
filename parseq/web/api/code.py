"""``/api/v1/parsers/<name>/code``: upload a parser's code as a new version, download any
version, list them. A flask-smorest Blueprint: its schemas serialize and document the answers.

Authentication and the JSON error envelope are the API's (``parseq.web.api.base``): a read-only
token may download, not upload.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import marshmallow as ma
from flask import Response, current_app, request, stream_with_context

from parseq.core.enums import CodeFormat, CodeSource
from parseq.core.errors import ParseqError, ValidationError
from parseq.db.code_models import CodeVersion
from parseq.db.models import Parser, db
from parseq.services import code_store, runs
from parseq.services.registry import validate_name
from parseq.web.api.base import api_blueprint, auth_errors

bp = api_blueprint("api_code", __name__, "Parser code, versioned: upload, download, history")

#: What a download is served as, by stored format.
MEDIA_TYPES = {
    CodeFormat.PY: "text/x-python; charset=utf-8",
    CodeFormat.IPYNB: "application/x-ipynb+json",
    CodeFormat.ZIP: "application/zip",
    CodeFormat.TAR_GZ: "application/gzip",
}
UPLOAD_TYPES = ("text/x-python", "application/x-ipynb+json", "application/zip", "application/gzip")

_BYTES = {"schema": {"type": "string", "format": "binary"}}
#: The upload's body and the download's answer: the code file itself, by its type.
CODE_CONTENT = {
    # Any text may be a script: the store checks it (422), not the document.
    "text/x-python": {"schema": {}},
    "application/x-ipynb+json": {"schema": {"type": "object"}},
    "application/zip": _BYTES,
    "application/gzip": _BYTES,
}
DOWNLOAD_RESPONSES = {
    "200": {
        "description": "The code, as uploaded (an archive for a folder parser)",
        "headers": {
            "Content-Disposition": {"schema": {"type": "string"}},
            "ETag": {"schema": {"type": "string"}},
            "X-Parseq-Code-Version": {"schema": {"type": "integer"}},
        },
        "content": {
            **CODE_CONTENT,
            "text/x-python; charset=utf-8": {"schema": {"type": "string"}},
        },
    }
}


class PayloadTooLarge(ParseqError):
    """An upload over ``PARSEQ_CODE_MAX_BYTES``."""

    status_code = 413
    code = "payload_too_large"


class CodeVersionSchema(ma.Schema):
    """A version of a parser's code."""

    class Meta:
        ordered = True

    parser = ma.fields.String(required=True)
    version = ma.fields.Integer(required=True, metadata={"description": "1, 2, ... per parser"})
    sha256 = ma.fields.String(required=True)
    kind = ma.fields.String(required=True, metadata={"enum": ["script", "notebook"]})
    format = ma.fields.String(required=True, metadata={"enum": [f.value for f in CodeFormat]})
    filename = ma.fields.String(required=True)
    size = ma.fields.Integer(required=True)
    source = ma.fields.String(required=True, metadata={"enum": [s.value for s in CodeSource]})
    created_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    requirements_lock = ma.fields.String(
        required=True, metadata={"description": "what every worker installs; empty: none"}
    )
    current = ma.fields.Boolean(required=True)
    url = ma.fields.String(required=True, metadata={"description": "downloads this version"})


class VersionListSchema(ma.Schema):
    versions = ma.fields.List(ma.fields.Nested(CodeVersionSchema), required=True)


class VersionQuerySchema(ma.Schema):
    version = ma.fields.Integer(
        validate=ma.validate.Range(min=1, max=2**31 - 1),
        metadata={"description": "a version number; the current version when absent"},
    )


def version_json(version: CodeVersion) -> dict[str, Any]:
    """A version as the API shows it, with its download URL."""
    url = f"{bp.url_prefix}/parsers/{quote(version.parser.name)}/code?version={version.number}"
    current = version.parser.code_version == version.number
    return {**version.to_dict(), "current": current, "url": url}


@bp.route("/parsers/<name>/code", methods=["PUT"])
@bp.response(200, CodeVersionSchema, description="A new version (or the current one, unchanged)")
@bp.alt_response(201, schema=CodeVersionSchema, description="The parser was created")
@bp.doc(requestBody={"required": True, "content": CODE_CONTENT})
@bp.errors(*auth_errors(400, 413, 415, 422, 503, write=True))
def put_code(name: str) -> tuple[dict[str, Any], int]:
    """Upload the parser's code as the body: a script (``text/x-python``), a notebook
    (``application/x-ipynb+json``), or a folder parser (``application/zip``,
    ``application/gzip``) with ``main.py`` or ``main.ipynb``. Creates the parser if needed; its
    kind follows the content."""
    state = current_app.extensions["parseq"]
    data = _body(state.config.code_max_bytes)
    parser = db.session.execute(db.select(Parser).filter_by(name=name)).scalar_one_or_none()
    created = parser is None
    if parser is None:
        parser = Parser(name=validate_name(name), path="", description="")
    version = code_store.save_code(
        state.config,
        state.storage,
        parser,
        data,
        CodeSource.API,
        content_type=request.content_type or "",
    )
    db.session.commit()
    return version_json(version), 201 if created else 200


def _body(max_bytes: int) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(
            f"code is {request.content_length} bytes; the limit is {max_bytes} "
            "(PARSEQ_CODE_MAX_BYTES)"
        )
    data = request.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"code is over {max_bytes} bytes (PARSEQ_CODE_MAX_BYTES)")
    if not data:
        raise ValidationError("the body is empty: send the code as the body", field="code")
    return data


@bp.route("/parsers/<name>/code", methods=["GET"])
@bp.arguments(VersionQuerySchema, location="query", as_kwargs=True)
@bp.doc(responses=DOWNLOAD_RESPONSES)
@bp.errors(*auth_errors(400, 404, 422, 503))
def get_code(name: str, version: int | None = None) -> Response:
    """Download the parser's current code, or ``?version=N``."""
    found = code_store.get_version(runs.get_parser(name), version)
    storage = current_app.extensions["parseq"].storage
    resp = Response(
        stream_with_context(code_store.read(storage, found)),
        mimetype=MEDIA_TYPES[found.format],
    )
    resp.headers["Content-Disposition"] = f'attachment; filename="{found.filename}"'
    resp.headers["Content-Length"] = str(found.size)
    resp.headers["ETag"] = f'"{found.sha256}"'
    resp.headers["X-Parseq-Code-Version"] = str(found.number)
    return resp


@bp.route("/parsers/<name>/code/versions", methods=["GET"])
@bp.response(200, VersionListSchema, description="Newest first")
@bp.errors(*auth_errors(404))
def list_code_versions(name: str) -> dict[str, Any]:
    """The parser's code versions, newest first."""
    versions = code_store.list_versions(runs.get_parser(name))
    return {"versions": [version_json(v) for v in versions]}
