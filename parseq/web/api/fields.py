"""Marshmallow fields of the API: JSON types taken as they are (no ``"10"`` for 10, no ``1``
for true), service rules as validators, and the JSON Schema keywords apispec leaves out.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import marshmallow as ma
from flask import current_app

from parseq.core.errors import ParseqError


def rule(check: Callable[..., Any], *args: Any) -> Callable[[Any], None]:
    """A marshmallow validator that calls a service check (``check(*args, value)``) and keeps
    its message: the admin form shows the same one."""

    def validate(value: Any) -> None:
        try:
            check(*args, value)
        except ParseqError as exc:
            raise ma.ValidationError(exc.message) from None

    return validate


class StrictBoolean(ma.fields.Boolean):
    """``true`` or ``false`` only."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ma.ValidationError("must be true or false")
        return value


class StrictInteger(ma.fields.Integer):
    """A JSON integer (not a boolean, a fraction or a string)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ma.ValidationError("must be a whole number")
        return value


class StrictNumber(ma.fields.Float):
    """A JSON number (not a boolean or a string); range checks are the service rule's."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ma.ValidationError("must be a number")
        return value


class StrictString(ma.fields.String):
    """A JSON string (marshmallow takes numbers as strings)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ma.ValidationError("must be a string")
        return super()._deserialize(value, attr, data, **kwargs)


class Scalar(ma.fields.Raw):
    """A positional argument: a string, a number or a boolean."""

    def __init__(self, **kwargs: Any) -> None:
        schema = {"type": ["string", "number", "boolean"]}
        super().__init__(**kwargs, metadata={"json_schema": schema, **kwargs.pop("metadata", {})})

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if value is None or isinstance(value, (dict, list)):
            raise ma.ValidationError("must be a string, a number or a boolean")
        return value


class QueryTime(ma.fields.DateTime):
    """An ISO 8601 time in a query string; a naive one is UTC, and a ``+`` that a URL turned
    into a space is read back as ``+``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        try:
            parsed = datetime.fromisoformat(str(value).replace(" ", "+"))
        except ValueError:
            raise ma.ValidationError("must be an ISO 8601 date-time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class ConfiguredMaximum(ma.fields.Float):
    """A number bounded by a setting (``PARSEQ_MAX_WAIT_S``): checked per request, documented
    with the value the app was built with (:func:`configured_maximum`)."""

    def __init__(self, setting: str, **kwargs: Any) -> None:
        super().__init__(allow_nan=False, **kwargs)
        self.setting = setting

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        number = super()._deserialize(value, attr, data, **kwargs)
        limit = getattr(current_app.extensions["parseq"].config, self.setting)
        if not 0 <= number <= limit:
            raise ma.ValidationError(f"must be between 0 and {limit:g} seconds")
        return number


def json_schema_extras(self: Any, field: ma.fields.Field, **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: ``metadata={"json_schema": {...}}`` goes into the document
    as it is (``propertyNames`` and other JSON Schema keywords apispec does not pass)."""
    return dict(field.metadata.get("json_schema", {}))


def configured_maximum(config: Any) -> Callable[..., dict[str, Any]]:
    """apispec attribute function documenting :class:`ConfiguredMaximum` fields' bounds."""

    def attributes(self: Any, field: ma.fields.Field, **kwargs: Any) -> dict[str, Any]:
        if isinstance(field, ConfiguredMaximum):
            return {"minimum": 0, "maximum": getattr(config, field.setting)}
        return {}

    return attributes


def enum_text(enum: type, **kwargs: Any) -> ma.fields.String:
    """An answer's enum field: the models' ``to_dict`` gives its value as text."""
    return ma.fields.String(metadata={"enum": [m.value for m in enum]}, **kwargs)


class CheckedNested(ma.fields.Nested):
    """A nested object documented by its schema but checked by a service function as a whole
    (``check(value)`` returns the clean value), so its messages are the service's."""

    def __init__(self, nested: Any, check: Callable[[Any], Any], **kwargs: Any) -> None:
        super().__init__(nested, **kwargs)
        self.check = check

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        try:
            return self.check(value)
        except ParseqError as exc:
            raise ma.ValidationError(exc.message) from None


def choice(enum: type, **kwargs: Any) -> ma.fields.Enum:
    """A request's enum field, taking the values as text; refused as ``must be 'a' or 'b'``."""
    values = [repr(m.value) for m in enum]
    text = values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"
    return ma.fields.Enum(
        enum, by_value=True, error_messages={"unknown": f"must be {text}"}, **kwargs
    )
