"""Executed notebooks as web pages: ``output.ipynb`` through nbconvert's HTML exporter (the
JupyterLab look: markdown, code, streams, errors, images, HTML outputs).

A notebook's HTML outputs are the scraped web's and the notebook author's: they must never run
script in Parseq's origin. So the page is served with a Content-Security-Policy that allows
no script at all, no request leaving the page (images inline only) and makes it a sandbox (an
opaque origin, no forms, no top navigation) even when opened on its own; the admin shows it in
an ``<iframe sandbox>`` as well. nbconvert's own sanitizer is not used: it escapes markdown
headings, and the sandbox already makes every script inert.
"""

from __future__ import annotations

from typing import Any

import nbformat

from parseq.core.errors import ValidationError

#: No script, nothing fetched (images are inline ``data:``), styles inline, framed by Parseq
#: only, and sandboxed even as a top-level page.
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",  # the admin frames it (CSP frame-ancestors says so too)
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-cache",
}


def render_html(raw: bytes, title: str) -> str:
    """A notebook's JSON as a standalone HTML page; :class:`ValidationError` when it is not
    a notebook nbformat can read."""
    from nbconvert import HTMLExporter  # slow to import: only when a page is asked for

    try:
        nb: Any = nbformat.reads(raw.decode("utf-8"), as_version=4)
    except (UnicodeDecodeError, ValueError) as exc:  # nbformat's read errors are ValueErrors
        raise ValidationError(
            f"{title} is not a readable notebook: {exc}", field="format"
        ) from None
    nb.setdefault("metadata", {})["title"] = title
    try:
        body, _resources = HTMLExporter(template_name="lab").from_notebook_node(nb)
    except Exception as exc:  # any notebook a parser wrote: an error message, never a 500
        raise ValidationError(f"{title} cannot be rendered: {exc}", field="format") from None
    return body
