"""The run context: who is running, with which arguments and secrets, and where files go.

Under Parseq everything comes from the parser contract's environment variables (``PARSEQ_*``).
Outside Parseq (``python parsers/x.py``, a Jupyter kernel) the same names fall back to a local
``.parseq/<parser>/`` folder and to ``--key value`` pairs on the command line, so a parser is
written and debugged without a server.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

LOCAL_DIR = ".parseq"
_TRUE = frozenset({"1", "true", "yes", "on", "y"})
_FALSE = frozenset({"0", "false", "no", "off", "n"})


class ArgError(ValueError):
    """An argument has a value of the wrong type."""


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError(v)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(v)
        return int(v)
    return int(str(v).strip())


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError(v)
    value = float(str(v).strip()) if isinstance(v, str) else float(v)
    if not math.isfinite(value):
        raise ValueError(v)
    return value


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(v)


def _to_list(v: Any) -> list[Any]:
    if isinstance(v, list):
        return v
    if isinstance(v, str):
        text = v.strip()
        if text.startswith("["):
            value = json.loads(text)
            if isinstance(value, list):
                return value
            raise ValueError(v)
        return [part.strip() for part in text.split(",") if part.strip()]
    raise TypeError(v)


def _to_str(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _to_json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def _variants(name: str) -> tuple[str, ...]:
    # `--max-pages` and `max_pages` name the same argument.
    return (name, name.replace("-", "_"), name.replace("_", "-"))


class Args(Mapping[str, Any]):
    """Run arguments with typed accessors: ``args.int("max_pages", 0)``.

    Values are taken as given (JSON types under Parseq, strings from a local command line) and
    converted by the accessor, so ``2`` and ``"2"`` both read as ``2``; a value that does not
    convert raises :class:`ArgError` naming the argument.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> Any:
        for key in _variants(name):
            if key in self._values:
                return self._values[key]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Args({self._values!r})"

    def _convert(self, name: str, default: Any, kind: str, convert: Any) -> Any:
        try:
            raw = self[name]
        except KeyError:
            return default
        if raw is None:
            return default
        try:
            return convert(raw)
        except (TypeError, ValueError):
            raise ArgError(f"argument {name!r} must be {kind}, got {raw!r}") from None

    def str(self, name: str, default: str = "") -> str:
        return self._convert(name, default, "a string", _to_str)

    def int(self, name: str, default: int = 0) -> int:
        return self._convert(name, default, "an integer", _to_int)

    def float(self, name: str, default: float = 0.0) -> float:
        return self._convert(name, default, "a number", _to_float)

    def bool(self, name: str, default: bool = False) -> bool:
        return self._convert(name, default, "true or false", _to_bool)

    def list(self, name: str, default: tuple[Any, ...] = ()) -> list[Any]:
        """A JSON list, or a comma-separated string (``USD,EUR``)."""
        return self._convert(name, [*default], "a list", _to_list)

    def json(self, name: str, default: Any = None) -> Any:
        """A JSON value (given as JSON text on a local command line)."""
        return self._convert(name, default, "JSON", _to_json)


def _is_value(token: str) -> bool:
    """A token after ``--key`` is its value unless it looks like an option (``-1`` is a value)."""
    if not token.startswith("-"):
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


def split_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Options and positional arguments of a command line, the way Parseq passes them:
    ``--key value``, ``--key=value``, ``-k value``, and bare ``--flag`` / ``-f`` (true); every
    other token (and all after ``--``) is positional."""
    args: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            positional += argv[i:]
            break
        if token.startswith("--"):
            key, sep, value = token[2:].partition("=")
        elif len(token) == 2 and token[0] == "-" and token[1].isalpha():
            key, sep, value = token[1], "", ""
        else:
            positional.append(token)
            continue
        if sep:
            args[key] = value
        elif i < len(argv) and _is_value(argv[i]):
            args[key] = argv[i]
            i += 1
        else:
            args[key] = True
    return args, positional


def parse_argv(argv: list[str]) -> dict[str, Any]:
    """The options of :func:`split_argv` (a Jupyter kernel's own ``-f file`` is not read:
    in a kernel the SDK reads no command line)."""
    return split_argv(argv)[0]


class SecretStr(str):
    """A secret's value: a plain ``str`` to use, but its ``repr`` does not show it."""

    def __repr__(self) -> str:
        return "'***'"


class Secrets(Mapping[str, str]):
    """Secrets by name, read from the environment; ``repr`` shows names only.

    Under Parseq the names are those the parser has (``PARSEQ_SECRET_NAMES``); locally any
    exported variable can be read by name.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        raw = environ.get("PARSEQ_SECRET_NAMES")
        self._names = [n for n in raw.split(",") if n] if raw is not None else None

    def __getitem__(self, name: str) -> SecretStr:
        if (self._names is None or name in self._names) and name in self._environ:
            return SecretStr(self._environ[name])
        raise KeyError(
            f"secret {name!r} is not set (add it to the parser's secrets in Parseq, "
            "or export it in your shell when running locally)"
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._names or [])

    def __len__(self) -> int:
        return len(self._names or [])

    def __repr__(self) -> str:
        return "Secrets(" + ", ".join(f"{n}='***'" for n in self) + ")"


def _local_parser_name() -> str:
    if "ipykernel" in sys.modules or not sys.argv or not sys.argv[0].endswith(".py"):
        return "notebook"
    script = Path(sys.argv[0])
    return script.parent.name if script.name == "main.py" else script.stem


class Context:
    """The current run, read from the environment each time (cheap, and right after a
    notebook changes its working directory or environment)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self._args_cache: tuple[str | None, Args] | None = None

    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    @property
    def under_parseq(self) -> bool:
        """True inside a Parseq run; False in local mode."""
        return bool(self.env.get("PARSEQ_RUN_ID"))

    @property
    def run_id(self) -> int | None:
        raw = self.env.get("PARSEQ_RUN_ID")
        return int(raw) if raw and raw.isdigit() else None

    @property
    def parser(self) -> str:
        return self.env.get("PARSEQ_PARSER") or _local_parser_name()

    @property
    def args(self) -> Args:
        """``PARSEQ_ARGS`` under Parseq; ``--key value`` pairs of ``sys.argv`` locally."""
        raw = self.env.get("PARSEQ_ARGS")
        if self._args_cache is None or self._args_cache[0] != raw:
            if raw is not None:
                values = json.loads(raw or "{}")
            elif "ipykernel" in sys.modules:
                values = {}
            else:
                values = parse_argv(sys.argv[1:])
            self._args_cache = (raw, Args(values if isinstance(values, dict) else {}))
        return self._args_cache[1]

    @property
    def positional(self) -> list[Any]:
        """Positional arguments: ``PARSEQ_POSITIONAL`` under Parseq; the command line's locally."""
        raw = self.env.get("PARSEQ_POSITIONAL")
        if raw is not None:
            values = json.loads(raw or "[]")
            return values if isinstance(values, list) else []
        if "ipykernel" in sys.modules:
            return []
        return split_argv(sys.argv[1:])[1]

    @property
    def secrets(self) -> Secrets:
        return Secrets(self.env)

    @property
    def local_dir(self) -> Path:
        """This parser's folder in local mode: ``.parseq/<parser>/`` under the working dir."""
        return Path.cwd() / LOCAL_DIR / self.parser

    def _dir(self, var: str, local: str) -> Path:
        raw = self.env.get(var)
        path = Path(raw) if raw else self.local_dir / local
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def output_dir(self) -> Path:
        """Where result files go (every file in it is stored with the run)."""
        return self._dir("PARSEQ_OUTPUT_DIR", "output")

    @property
    def state_dir(self) -> Path:
        """What persists between runs of this parser: state, checkpoints, the page cache."""
        return self._dir("PARSEQ_STATE_DIR", "state")

    @property
    def progress_file(self) -> Path:
        """Where :func:`parseq_sdk.reporting` reports; the worker reads it while the run goes."""
        raw = self.env.get("PARSEQ_PROGRESS_FILE")
        return Path(raw) if raw else self.local_dir / "progress.json"

    def __repr__(self) -> str:
        return (
            f"Context(run_id={self.run_id!r}, parser={self.parser!r}, args={self.args!r}, "
            f"secrets={self.secrets!r}, output_dir='{self.output_dir}', "
            f"state_dir='{self.state_dir}', under_parseq={self.under_parseq})"
        )


context = Context()
