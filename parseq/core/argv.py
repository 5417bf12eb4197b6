"""A run's command line, as the parser contract defines it: argument and secret names, the
positional arguments, and the argv built from them.

Plain rules over plain values, shared by the services that validate input (API, admin) and the
sandbox and notebook launcher that build the command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from parseq.core.errors import ValidationError

ARG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Variables a secret may not shadow: the contract's and the ones the sandbox sets.
RESERVED_ENV = frozenset(
    {"PATH", "HOME", "TMPDIR", "TMP", "TEMP", "LANG", "LC_ALL", "PYTHONUNBUFFERED", "PYTHONPATH"}
)


def validate_arg_name(name: str) -> str:
    """Argument names become ``--name`` flags: keep them to safe identifiers."""
    if not isinstance(name, str) or not ARG_NAME_RE.match(name):
        raise ValidationError(
            f"argument name {name!r} must start with a letter or _ and contain only "
            "letters, digits, _ and - (at most 64)",
            field="args",
        )
    return name


def validate_secret_name(name: str) -> str:
    """Secret names become environment variables of their own."""
    if not isinstance(name, str) or not SECRET_NAME_RE.match(name):
        raise ValidationError(
            f"secret name {name!r} must be a valid environment variable name "
            "(letters, digits, _; not starting with a digit)",
            field="secrets",
        )
    if name in RESERVED_ENV or name.upper().startswith("PARSEQ_"):
        raise ValidationError(f"secret name {name!r} is reserved by Parseq", field="secrets")
    return name


def arg_to_str(value: Any) -> str:
    """How an argument value appears in argv: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def option_argv(name: str, value: Any) -> list[str]:
    """How one argument appears in argv, the way argparse CLIs expect it: ``true`` is a bare
    flag, ``false`` and ``null`` are left out, a one-character name is a short option
    (``-m 20``), any other a long one (``--pages 3``), with the name exactly as given."""
    flag = ("-" if len(validate_arg_name(name)) == 1 else "--") + name
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    return [flag, arg_to_str(value)]


def build_command(
    interpreter: Path | str,
    script: Path | str,
    args: Mapping[str, Any],
    positional: Sequence[Any] = (),
) -> list[str]:
    """The argv of a run: ``<interpreter> <script>``, the options in the args' order
    (:func:`option_argv`), then the positional arguments (strings as is, the rest as JSON)."""
    argv = [str(interpreter), str(script)]
    for name, value in args.items():
        argv += option_argv(name, value)
    return argv + [arg_to_str(value) for value in positional]


def check_positional(values: object) -> list[Any]:
    """Positional arguments must be a JSON list of strings, numbers or booleans."""
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, (str, int, float)) and "\0" not in arg_to_str(v) for v in values
    ):
        raise ValidationError(
            "positional must be a JSON list of strings and numbers (no NUL characters)",
            field="positional",
        )
    return list(values)
