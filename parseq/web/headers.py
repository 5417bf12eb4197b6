"""Security headers of every response, the Content-Security-Policy and its script nonces, and
HTTPS awareness: ``Secure`` cookies and HSTS when the request came over HTTPS, read through
trusted proxies' ``X-Forwarded-*`` headers (``PARSEQ_TRUSTED_PROXY_COUNT``).

The policy allows scripts and styles from this site only. An inline ``<script>`` runs only with
the request's nonce (``{{ csp_nonce() }}`` in a template; Flask-Admin adds it to its own
scripts), and inline event handlers only when they are the ones Flask-Admin's list pages use
(hashed below; ``'unsafe-hashes'`` allows exactly those strings, nothing an injection could
vary). Inline ``style`` attributes stay allowed: the admin's progress bars and Flask-Admin's
widgets set them, and a style cannot run code.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from flask import Flask, Response, g, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from parseq.core.config import Config

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
#: Sent on responses to HTTPS requests only (a browser ignores it over plain HTTP), seconds.
HSTS_MAX_AGE_S = 365 * 24 * 3600
#: The list actions of the admin's views (``@action`` names, and Flask-Admin's ``delete``).
ADMIN_ACTIONS = ("run", "enable", "disable", "delete")
#: Flask-Admin's inline handlers (bootstrap4 ``row_actions.html``, ``layout.html`` and
#: ``actions.html``); ``tests/test_security.py`` fails when a page has one not listed here.
INLINE_HANDLERS = (
    "return faHelpers.safeConfirm('Are you sure you want to delete this record?');",
    "return false;",
    *(f"return modelActions.execute('{name}');" for name in ADMIN_ACTIONS),
)


def _hash_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_HANDLER_HASHES = " ".join(_hash_source(h) for h in INLINE_HANDLERS)


def csp_nonce() -> str:
    """This request's script nonce (made on first use; the policy names it then)."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return str(g.csp_nonce)


def content_security_policy(nonce: str | None) -> str:
    """The policy of a response whose page used ``nonce`` (None: no inline script at all)."""
    scripts = "'self'" + (f" 'nonce-{nonce}'" if nonce else "")
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src {scripts} 'unsafe-hashes' {_HANDLER_HASHES}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",  # Bootstrap draws its select arrows as data: SVGs
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def add_security_headers(response: Response) -> Response:
    """Every response: no MIME sniffing, no framing, no URL leaks in Referer, the CSP; HSTS
    when the request came over HTTPS."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault(
        "Content-Security-Policy", content_security_policy(g.get("csp_nonce"))
    )
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE_S}")
    return response


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, ``Secure`` also whenever the request is HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        secure = super().get_cookie_secure(app)
        return secure or (has_request_context() and request.is_secure)


def init_app(app: Flask, config: Config) -> None:
    """Install the headers, the HTTPS-aware session cookie and, when set, the proxy fix."""
    if config.trusted_proxy_count:
        hops = config.trusted_proxy_count
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )
    app.session_interface = SessionInterface()
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    app.after_request(add_security_headers)
