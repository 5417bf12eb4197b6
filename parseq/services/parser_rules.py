"""The rules a parser's settings must meet, shared by the admin form and the REST API.

Both call these functions and show their messages unchanged: a value the admin refuses, the
API refuses with the same words (and the other way round). Each check returns the clean value
or raises :class:`ValidationError` naming the field. The API's schemas document the same bounds
from the constants here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app

from parseq.core.config import Config
from parseq.core.errors import Conflict, ParseqError, ValidationError
from parseq.db.models import Parser, ParserKind, db
from parseq.envs import requirements as reqs
from parseq.notebooks.validate import check_parser_notebook
from parseq.services import code_store, notify_settings
from parseq.services.registry import validate_path
from parseq.services.schedules import Schedule

#: Longest timeout or schedule interval accepted: ten years, in seconds.
MAX_SECONDS = 10 * 365 * 24 * 3600
MAX_RETRIES = 100
#: Largest whole number a limit may hold: what a JSON number keeps exactly (2**53).
MAX_LIMIT = 2**53


@dataclass(frozen=True)
class Limit:
    """A sandbox limit: its ``Parser`` column, whether it takes fractions, and its unit."""

    column: str
    fractional: bool
    unit: str


#: API name (in ``limits``) -> the column it sets. None = the configured default; 0 = no limit.
LIMITS: dict[str, Limit] = {
    "memory_bytes": Limit("max_memory_bytes", False, "bytes"),
    "cpu_s": Limit("max_cpu_s", True, "CPU seconds"),
    "processes": Limit("max_processes", False, "processes"),
    "file_bytes": Limit("max_file_bytes", False, "bytes"),
    "open_files": Limit("max_open_files", False, "open files"),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_timeout_s(value: Any) -> float | None:
    """A run's wall-clock limit in seconds; None = the configured default."""
    if value is None:
        return None
    # ``0 < value <= MAX`` also refuses NaN; infinity fails the maximum.
    if not _number(value) or not 0 < value <= MAX_SECONDS:
        raise ValidationError(
            f"must be a number of seconds > 0 and <= {MAX_SECONDS}, "
            "or empty (null) for the default",
            field="timeout_s",
        )
    return float(value)


def check_max_retries(value: Any) -> int:
    """How many times a failed run is retried."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise ValidationError(
            f"must be a whole number from 0 to {MAX_RETRIES}", field="max_retries"
        )
    return value


def check_limit(name: str, value: Any) -> int | float | None:
    """A sandbox limit by its API name (``memory_bytes``); None = the configured default."""
    limit = LIMITS[name]
    if value is None:
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if (
        not _number(value)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_LIMIT
        or not (limit.fractional or whole)
    ):
        kind = "a number" if limit.fractional else "a whole number"
        raise ValidationError(
            f"must be {kind} of {limit.unit} from 0 (no limit) to {MAX_LIMIT}, "
            "or empty (null) for the default",
            field=name,
        )
    return float(value) if limit.fractional else int(value)


def check_interval_s(schedule: Schedule) -> Schedule:
    """The schedule's interval within :data:`MAX_SECONDS`."""
    if schedule.interval_s is not None and not 0 < schedule.interval_s <= MAX_SECONDS:
        raise ValidationError(f"must be > 0 and <= {MAX_SECONDS} seconds", field="interval_s")
    return schedule


def check_parser(config: Config, values: Mapping[str, Any], existing: Parser | None) -> dict:
    """The checks that need more than one field or the machine: the path against its kind's
    root (and a notebook's content), the requirements against the install policy.

    ``values`` holds the fields a request sets (each already checked alone); returns them with
    the path normalized. Every failure is reported at once, by field, in one 422.
    """
    values = dict(values)
    errors: dict[str, str] = {}
    kind = values.get("kind", existing.kind if existing else ParserKind.SCRIPT)
    path = values.get("path")
    if path is None and "kind" in values and existing is not None:
        path = existing.path  # a new kind must still fit the stored path
    if path is not None:
        try:
            values["path"] = validate_path(config, kind, path)
            if kind is ParserKind.NOTEBOOK:
                check_parser_notebook(config, values["path"])  # valid nbformat 4, Python
        except ParseqError as exc:
            errors["path"] = exc.message
    if values.get("requirements"):
        try:  # the same policy the worker applies when it builds the env
            reqs.parse(values["requirements"], reqs.Policy.from_config(config))
        except ParseqError as exc:
            errors["requirements"] = exc.message
    if errors:
        raise invalid(errors)
    return values


def invalid(errors: Mapping[str, str]) -> ValidationError:
    """One 422 for several fields: ``fields`` maps each to its message."""
    summary = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return ValidationError(f"invalid parser: {summary}", field=next(iter(errors)), fields=errors)


def save_parser(parser: Parser, values: Mapping[str, Any]) -> Parser:
    """Set checked values on a parser (new or existing) and commit; 409 on a taken name.

    ``schedule`` is a :class:`Schedule`; ``limits`` a partial mapping of :data:`LIMITS` names;
    ``secrets`` and ``notifications`` are merged into the stored ones (None removes a key).
    """
    if "name" in values and values["name"] != parser.name:
        taken = db.session.execute(db.select(Parser.id).filter_by(name=values["name"])).first()
        if taken:
            raise Conflict(f"a parser named {values['name']!r} exists already", field="name")
    for name, value in values.items():
        if name == "schedule":
            value.apply(parser)
        elif name == "limits":
            for key, limit in value.items():
                setattr(parser, LIMITS[key].column, limit)
        elif name == "notifications":
            parser.notifications = notify_settings.merged(parser.notifications, value)
        elif name == "secrets":
            # Assign a new dict as a whole: encryption may sit behind this attribute.
            merged = {**(parser.secrets or {}), **value}
            parser.secrets = {k: v for k, v in merged.items() if v is not None}
        else:
            setattr(parser, name, value)
    db.session.add(parser)
    state = current_app.extensions["parseq"]
    code_store.refresh(state.config, state.storage, parser)  # a changed file or requirements
    db.session.commit()
    return parser
