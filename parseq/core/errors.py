"""Parseq's one exception tree. Errors carry structured fields for the API and logs."""

from __future__ import annotations

from typing import Any


class ParseqError(Exception):
    """Base of every error Parseq raises on purpose."""

    #: HTTP status the API answers with, and a stable machine-readable code.
    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of a JSON error response."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update({k: v for k, v in self.fields.items() if v is not None})
        return body


class ConfigError(ParseqError):
    """A setting is missing or malformed."""

    code = "config_error"


class Unauthorized(ParseqError):
    """No valid bearer token was sent."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ParseqError):
    """The token is valid but may not do this (a read-only token writing)."""

    status_code = 403
    code = "forbidden"


class TooManyRequests(ParseqError):
    """Too many failed logins or API tokens from this address or for this user; retry later."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after_s: int, **fields: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **fields)
        self.retry_after_s = retry_after_s


class NotFound(ParseqError):
    """A parser, run or file does not exist."""

    status_code = 404
    code = "not_found"


class BadRequest(ParseqError):
    """The request itself is malformed (bad JSON, wrong types)."""

    status_code = 400
    code = "bad_request"


class ValidationError(BadRequest):
    """A value is well-formed but not acceptable; ``field`` names it."""

    status_code = 422
    code = "validation_error"

    def __init__(self, message: str, field: str | None = None, **fields: Any) -> None:
        super().__init__(message, field=field, **fields)
        self.field = field


class Conflict(ParseqError):
    """The request clashes with the current state (e.g. cancelling a finished run)."""

    status_code = 409
    code = "conflict"


class StorageError(ParseqError):
    """The storage backend failed or is unreachable."""

    status_code = 503
    code = "storage_error"


class BrokerError(ParseqError):
    """The message broker failed or is unreachable."""

    status_code = 503
    code = "broker_error"


class SecretsKeyError(ParseqError):
    """Stored parser secrets do not decrypt with the configured keys."""

    code = "secrets_key_error"


class RunFailed(ParseqError):
    """A run ended without success; carries its id, exit code and stderr tail."""

    code = "run_failed"

    def __init__(
        self,
        message: str,
        run_id: int | None = None,
        exit_code: int | None = None,
        tail: str | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, exit_code=exit_code, tail=tail)
        self.run_id = run_id
        self.exit_code = exit_code
        self.tail = tail


class ScriptNotFound(RunFailed):
    """The parser's script or notebook file is missing or outside its root."""

    code = "script_not_found"


class MigrationError(ParseqError):
    """The database schema cannot be brought to this release's (``parseq.db.migrate``)."""

    code = "migration_error"
