"""API tokens: created once (the plain token is shown only then), stored as a sha256 hash.

A token is 32 random bytes, so a plain sha256 (no salt, no slow KDF) is enough: it cannot be
guessed, and hashing keeps a stolen database from yielding usable tokens.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from parseq.core.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationError
from parseq.db.models import NAME_RE, db, utcnow
from parseq.db.tokens import ApiToken

TOKEN_PREFIX = "pq_"  # nosec B105  # a label in front of tokens, not a secret
#: ``last_used_at`` is written at most this often per token, so reads stay reads.
TOUCH_INTERVAL = timedelta(seconds=60)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh plain token (``pq_`` + 43 url-safe characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_token(name: str, read_only: bool = False) -> tuple[ApiToken, str]:
    """Store a new token named ``name``; return it with the plain token (shown once)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(
            "token name must be 1-64 lowercase letters, digits, _ or -", field="name"
        )
    if db.session.execute(db.select(ApiToken.id).filter_by(name=name)).first():
        raise Conflict(f"a token named {name!r} exists already", field="name")
    plain = new_token()
    token = ApiToken(name=name, token_hash=hash_token(plain), read_only=read_only)
    db.session.add(token)
    db.session.commit()
    return token, plain


def revoke_token(name: str) -> ApiToken:
    token = db.session.execute(db.select(ApiToken).filter_by(name=name)).scalar_one_or_none()
    if token is None:
        raise NotFound(f"no token named {name!r}")
    token.revoked = True
    db.session.commit()
    return token


def authenticate(header: str | None, write: bool) -> ApiToken:
    """The token an ``Authorization: Bearer <token>`` header names, allowed to read (or write).

    Raises :class:`Unauthorized` (401) or :class:`Forbidden` (403).
    """
    scheme, _, plain = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not plain.strip():
        raise Unauthorized("send an API token: 'Authorization: Bearer <token>'")
    token = db.session.execute(
        db.select(ApiToken).filter_by(token_hash=hash_token(plain.strip()))
    ).scalar_one_or_none()
    if token is None or token.revoked:
        raise Unauthorized("the API token is unknown or revoked")
    if write and token.read_only:
        raise Forbidden(f"token {token.name!r} is read-only")
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > TOUCH_INTERVAL:
        token.last_used_at = now
        db.session.commit()
    return token
