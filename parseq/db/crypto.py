"""Parser secrets encrypted at rest with Fernet, behind a plain-dict attribute.

``Parser.secrets`` reads and writes a ``dict``; the :class:`EncryptedJSON` column type turns it
into a Fernet token (AES-128-CBC + HMAC-SHA256) with the app's keys. A ``MultiFernet`` decrypts
with the current key or any old one, so keys can be rotated: see :func:`rotate_secrets` and the
README's "Secrets" section.
"""

from __future__ import annotations

import json
import logging
import os
import secrets as stdlib_secrets
from pathlib import Path
from typing import Any, NoReturn

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app, has_app_context

from parseq.core.config import Config
from parseq.core.errors import ConfigError, SecretsKeyError

log = logging.getLogger(__name__)

KEY_FILE = "secrets_key"
KEY_HINT = (
    "parser secrets cannot be decrypted with PARSEQ_SECRETS_KEY: give every Parseq process the "
    "same key, and list previous keys in PARSEQ_SECRETS_OLD_KEYS after a rotation"
)


def local_key(path: Path, make: Any) -> str:
    """A key kept in a file under ``var/``: created once (atomically, so two processes starting
    together agree on it), then read back."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{stdlib_secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def make_cipher(config: Config) -> MultiFernet:
    """The current key (first: it encrypts) followed by the old ones (they only decrypt)."""
    current = config.secrets_key or local_key(
        config.var_dir / KEY_FILE, lambda: Fernet.generate_key().decode()
    )
    old = [k.strip() for k in config.secrets_old_keys.split(",") if k.strip()]
    keys = []
    for i, key in enumerate([current, *old]):
        try:
            keys.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            where = "PARSEQ_SECRETS_KEY" if i == 0 else f"PARSEQ_SECRETS_OLD_KEYS item {i}"
            raise ConfigError(
                f"{where} is not a Fernet key (32 url-safe base64-encoded bytes; make one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            ) from None
    return MultiFernet(keys)


class UnreadableSecrets(dict):  # type: ignore[type-arg]
    """What ``Parser.secrets`` holds when its token does not decrypt with the configured keys.

    It is a dict, empty, and every read raises :class:`SecretsKeyError`: a run of that parser
    fails with a clear message instead of running without its secrets, and writing it back
    unchanged keeps the original token (nothing is lost while the keys are being fixed).
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def _fail(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise SecretsKeyError(KEY_HINT)

    __iter__ = __len__ = __getitem__ = __contains__ = _fail
    keys = values = items = get = copy = _fail  # type: ignore[assignment]


def _cipher() -> MultiFernet:
    if not has_app_context():
        raise SecretsKeyError("parser secrets are only readable inside a Parseq app context")
    return current_app.extensions["parseq"].cipher


def encrypt(value: dict[str, str], cipher: MultiFernet) -> str:
    return cipher.encrypt(json.dumps(value, sort_keys=True).encode()).decode()


def decrypt(token: Any, cipher: MultiFernet) -> dict[str, str] | UnreadableSecrets:
    if isinstance(token, dict):  # a JSON column of a database made before encryption
        return token
    if token.lstrip().startswith("{"):
        return json.loads(token)  # written before encryption existed; rotate-secrets fixes it
    try:
        return json.loads(cipher.decrypt(token.encode()))
    except InvalidToken:
        log.error("%s", KEY_HINT)
        return UnreadableSecrets(token)


class EncryptedJSON(sa.TypeDecorator):
    """A JSON object stored as a Fernet token (text), keyed by the current app's cipher."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: dict[str, str] | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, UnreadableSecrets):
            return value.token
        return encrypt(dict(value), _cipher())

    def process_result_value(self, value: str | None, dialect: Any) -> dict[str, str] | None:
        if value is None:
            return {}
        return decrypt(value, _cipher())


def rotate_secrets(session: Any, cipher: MultiFernet) -> tuple[int, list[str]]:
    """Re-encrypt every parser's secrets with the current key (works on the raw column, so
    it never builds the dicts). Returns how many rows were rewritten and the names of parsers
    whose token no configured key opens (left as they are)."""
    table = sa.table("parsers", sa.column("id"), sa.column("name"), sa.column("secrets"))
    rows = session.execute(sa.select(table.c.id, table.c.name, table.c.secrets)).all()
    done, failed = 0, []
    for row in rows:
        if row.secrets is None:
            continue
        try:
            if row.secrets.lstrip().startswith("{"):
                token = encrypt(json.loads(row.secrets), cipher)
            else:
                token = cipher.rotate(row.secrets.encode()).decode()
        except InvalidToken:
            failed.append(row.name)
            continue
        session.execute(sa.update(table).where(table.c.id == row.id).values(secrets=token))
        done += 1
    session.commit()
    return done, failed
