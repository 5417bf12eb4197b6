"""Serving a run's stored file over HTTP, for the REST API and the admin alike: whole, a
``Range`` of it, a presigned S3 redirect, ``output.txt`` as JSON when it holds JSON Lines, an
executed notebook as a page.

File names are looked up on the run's records only, so no path trick can reach the
filesystem or another run's objects.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Iterator
from urllib.parse import quote

from flask import Response, current_app, jsonify, redirect, request, stream_with_context

from parseq.core.errors import BadRequest, NotFound, ValidationError
from parseq.db.models import Run, RunFile
from parseq.notebooks import nbrender
from parseq.storage.base import ByteRange

#: Files that ``?format=json`` may turn from JSON Lines into a JSON document.
JSON_LINES_SUFFIXES = (".txt", ".jsonl", ".ndjson")
#: What cannot stand in a quoted ``filename="..."``: quote, backslash, controls.
_UNQUOTABLE = re.compile(r'["\\\x00-\x1f\x7f]')


def stored_file(run: Run, name: str) -> RunFile:
    stored = run.file(name)
    if stored is None:
        raise NotFound(f"run {run.id} has no file {name!r}", run_id=run.id)
    return stored


def serve(stored: RunFile) -> Response:
    """The file's bytes: whole, a ``Range`` of them, a presigned redirect, or JSON."""
    fmt = request.args.get("format", "raw")
    if fmt not in ("raw", "json", "html"):
        raise BadRequest("format must be 'raw', 'json' or 'html'", field="format")
    if fmt == "json":
        return _json_lines(stored)
    if fmt == "html":
        return _notebook_html(stored)
    state = current_app.extensions["parseq"]
    filename = stored.name.rsplit("/", 1)[-1]
    content_type = _content_type(filename)
    disposition = _content_disposition(filename)
    if state.config.s3_presign and hasattr(state.storage, "presigned_url") and stored.size:
        url = state.storage.presigned_url(
            stored.storage_key, state.config.s3_presign_expires_s, disposition, content_type
        )
        resp = redirect(url, 302)
        resp.headers["Cache-Control"] = "no-store"
        return resp
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": disposition,
        "ETag": f'"{stored.sha256}"',
    }
    byte_range = requested_range(stored.size, stored.sha256)
    if byte_range == "unsatisfiable":
        resp = jsonify(
            {
                "error": {
                    "code": "range_not_satisfiable",
                    "message": f"the file has {stored.size} bytes",
                }
            }
        )
        resp.status_code = 416
        resp.headers["Content-Range"] = f"bytes */{stored.size}"
        return resp
    status = 200
    length = stored.size
    if byte_range is not None:
        start, stop = byte_range
        status, length = 206, stop - start
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{stored.size}"
    chunks = stored_bytes(stored, byte_range)
    headers["Content-Length"] = str(length)
    return Response(
        stream_with_context(chunks), status=status, content_type=content_type, headers=headers
    )


def stored_bytes(stored: RunFile, byte_range: ByteRange | None = None) -> Iterator[bytes]:
    """The file's bytes from storage; an empty file has no object there (``uploads``)."""
    if stored.size == 0:
        return iter(())
    return current_app.extensions["parseq"].storage.iter_bytes(stored.storage_key, byte_range)


def requested_range(size: int, sha256: str) -> ByteRange | str | None:
    """The one byte range a ``Range`` header asks for, ``"unsatisfiable"``, or None for the
    whole file. Malformed, multi-range and stale ``If-Range`` requests get the whole file,
    as RFC 9110 section 14.2 allows."""
    if "Range" not in request.headers:
        return None
    if_range = request.headers.get("If-Range")
    if if_range and if_range.strip() != f'"{sha256}"':
        return None
    rng = request.range
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        return None
    start, stop = rng.ranges[0]
    if start < 0:  # a suffix: the last -start bytes
        start, stop = max(size + start, 0), size
    else:
        stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        return "unsatisfiable"
    return start, stop


def _json_lines(stored: RunFile) -> Response:
    """A JSON Lines file as ``{"items": [...]}``; 422 when a line is not JSON."""
    if not stored.name.endswith(JSON_LINES_SUFFIXES):
        raise BadRequest(
            "format=json is only for output.txt and .jsonl/.ndjson files", field="format"
        )
    config = current_app.extensions["parseq"].config
    if stored.size > config.max_json_output_bytes:
        raise ValidationError(
            f"{stored.name} has {stored.size} bytes, more than PARSEQ_MAX_JSON_OUTPUT_BYTES "
            f"({config.max_json_output_bytes}); download it raw",
            field="format",
        )
    data = b"".join(stored_bytes(stored))
    items = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError:
            raise ValidationError(
                f"{stored.name} is not JSON Lines: line {number} is not valid JSON",
                field="format",
                line=number,
            ) from None
    return jsonify({"run_id": stored.run_id, "file": stored.name, "items": items})


def _notebook_html(stored: RunFile) -> Response:
    """An ``.ipynb`` rendered as a sandboxed page (:mod:`parseq.notebooks.nbrender`)."""
    if not stored.name.endswith(".ipynb"):
        raise BadRequest("format=html is only for .ipynb files", field="format")
    config = current_app.extensions["parseq"].config
    if stored.size > config.max_render_bytes:
        raise ValidationError(
            f"{stored.name} has {stored.size} bytes, more than PARSEQ_MAX_RENDER_BYTES "
            f"({config.max_render_bytes}); download it raw",
            field="format",
        )
    html = nbrender.render_html(b"".join(stored_bytes(stored)), stored.name)
    return Response(html, content_type="text/html; charset=utf-8", headers=nbrender.HEADERS)


def _content_type(filename: str) -> str:
    if filename.endswith((".txt", ".log")):
        return "text/plain; charset=utf-8"
    if filename.endswith(".ipynb"):
        return "application/x-ipynb+json"
    if filename.endswith((".jsonl", ".ndjson")):
        return "application/x-ndjson"
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _content_disposition(filename: str) -> str:
    """``attachment`` with the name twice: a plain ASCII fallback where quotes, backslashes and
    control characters (CR/LF would end the header) become ``_``, and the exact name
    percent-encoded (RFC 6266 ``filename*``), which every current browser prefers."""
    ascii_name = _UNQUOTABLE.sub("_", filename.encode("ascii", "replace").decode())
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
