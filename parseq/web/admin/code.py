"""The parser form's code part: upload, in-form edit, the stored-code choice, and what the
parser's current version and lock are. Saving goes through :mod:`parseq.code_store`, the same
rules as ``PUT /api/v1/parsers/<name>/code``; nothing is written into ``parsers/``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from flask import current_app
from markupsafe import Markup
from werkzeug.datastructures import FileStorage
from wtforms import SelectChoice, fields

from parseq.core.enums import CodeSource
from parseq.core.errors import ValidationError
from parseq.db.models import Parser
from parseq.services import code_store
from parseq.web.admin.admin_forms import Unbound

#: The script choice that keeps a parser's stored (uploaded or edited) code.
STORED = "stored:"
#: Largest code shown in the form's editor, in bytes; larger code is replaced by upload.
MAX_EDIT_BYTES = 256 * 1024


class CodeEditField(Unbound, fields.TextAreaField):
    """The current script or notebook as text; a changed text is saved as a new version."""


def form_fields() -> dict[str, Any]:
    return {
        "code_edit": CodeEditField(
            "Code",
            description="Edit the stored script or notebook; saving a change makes a version.",
        )
    }


def download_url(parser: Parser, number: int) -> str:
    return f"/api/v1/parsers/{quote(parser.name)}/code?version={number}"


def prepare(form: Any, parser: Parser | None, is_get: bool) -> None:
    """Offer the stored code as a script choice, fill the editor with it and say which version
    and lock the parser has."""
    version = code_store.current_version(parser) if parser is not None else None
    if parser is None or version is None:
        del form["code_edit"]
        return
    if not parser.path:
        label = f"(stored code, version {version.number}: {version.filename})"
        form.script.choices.insert(1, SelectChoice(STORED, label))
        if is_get:
            form.script.data = STORED
    link = Markup('<a href="{}">download</a>').format(download_url(parser, version.number))
    lock = version.requirements_lock or "(no requirements)"
    form.upload.description = Markup(
        "Current: version {} ({}, {} bytes, sha256 {}&hellip;), {}. Requirements lock:"
        "<pre class='parseq-lock small border p-2'>{}</pre>"
    ).format(version.number, version.source.value, version.size, version.sha256[:12], link, lock)
    if version.format.is_archive or version.size > MAX_EDIT_BYTES:
        del form["code_edit"]
        return
    if is_get:
        storage = current_app.extensions["parseq"].storage
        data = b"".join(code_store.read(storage, version))
        form.code_edit.data = data.decode("utf-8", "replace")


def uploaded(form: Any) -> FileStorage | None:
    upload = form.upload.data
    return upload if isinstance(upload, FileStorage) and upload.filename else None


def apply(form: Any, model: Parser, current_choice: str | None) -> bool:
    """Save an upload, or a changed text in the editor, as a new version; True when the parser
    now runs stored code (the caller then leaves its path alone). ``current_choice``: the script
    choice the form was shown with (an edit of a file's text detaches the parser from the file).
    Raises :class:`ParseqError` for a form error."""
    state = current_app.extensions["parseq"]
    upload = uploaded(form)
    if upload is not None:
        with _field("upload"):
            code_store.save_code(
                state.config,
                state.storage,
                model,
                upload.read(),
                CodeSource.UPLOAD,
                filename=upload.filename or "",
                content_type=upload.mimetype or "",
            )
        return True
    current = code_store.current_version(model)
    if form.script.data == STORED and current is None:
        raise ValidationError("this parser has no stored code: choose a file", field="script")
    # Only a box the browser sent counts: a form posted without it (a script, an old page)
    # must not save an empty file over the code.
    sent = "code_edit" in form and bool(form.code_edit.raw_data)
    edit = form.code_edit.data if sent else None
    if current is not None and edit is not None and form.script.data in (STORED, current_choice):
        data = edit.replace("\r\n", "\n").encode("utf-8")
        stored = b"".join(code_store.read(state.storage, current))
        if data != stored.replace(b"\r\n", b"\n"):
            with _field("code_edit"):
                code_store.save_code(
                    state.config,
                    state.storage,
                    model,
                    data,
                    CodeSource.EDIT,
                    filename=current.filename,
                )
            return True
    return form.script.data == STORED


@contextlib.contextmanager
def _field(name: str) -> Iterator[None]:
    """Code errors shown on the form field the code came from."""
    try:
        yield
    except ValidationError as exc:
        if exc.field != "code":  # requirements: shown on their own field
            raise
        raise ValidationError(exc.message, field=name) from None


def version_cell(parser: Parser, number: int | None) -> Markup | str:
    """A version number linked to its download (admin sessions may read the API)."""
    if number is None:
        return "file on the worker's disk"
    return Markup('<a href="{}">{}</a>').format(download_url(parser, number), number)
