"""What every ``parseq`` command module shares: one-line errors and building the app."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from typing import IO, Any

import click

from parseq.core.config import Config
from parseq.core.errors import ParseqError
from parseq.web.app import create_app, init_db


class _OneLineClickError(click.ClickException):
    """A click error (usage or other) shown as ``parseq: error: ...``, keeping its exit code."""

    def __init__(self, exc: click.ClickException) -> None:
        lines = [line.strip() for line in exc.format_message().splitlines() if line.strip()]
        message = "; ".join(lines).rstrip(".")
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        super().__init__(message)
        self.exit_code = exc.exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"parseq: error: {self.message}", err=True)


class OneLineErrorsGroup(click.Group):
    """A group whose usage errors (unknown option, bad value, missing argument, in it or in any
    subcommand) are one line ``parseq: error: ...`` on stderr with exit 2, not click's usage
    block: the README promises one-line errors from every command."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _one_line_click_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_click_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_click_errors() -> Iterator[None]:
    try:
        yield
    except (click.exceptions.NoArgsIsHelpError, _OneLineClickError):
        raise  # a bare group's help is help, not an error; ours is converted already
    except click.ClickException as exc:
        raise _OneLineClickError(exc) from exc


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report Parseq errors as one line on stderr and exit 1, without a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ParseqError as exc:
            click.echo(f"parseq: error: {exc.message}", err=True)
            sys.exit(1)
        except OSError as exc:
            click.echo(f"parseq: error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            if type(exc).__module__ != "sqlalchemy.exc":
                raise
            # The driver's first line says it ("connection ... refused"); the rest is SQL.
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            click.echo(f"parseq: error: database: {detail}", err=True)
            sys.exit(1)

    return wrapper


def build_app(**overrides: Any):  # type: ignore[no-untyped-def]
    """The app of this command, named ``parseq <command>`` in PostgreSQL's session list, with
    Alembic's INFO logs (a dozen lines per command) shown only under ``parseq -v``."""

    values = {k: v for k, v in overrides.items() if v is not None}
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        values.setdefault("application_name", _command_name(ctx))
    app = create_app(Config.from_env(**values))
    if ctx is not None and ctx.find_root().params.get("verbose"):
        logging.getLogger("alembic").setLevel(logging.INFO)
    return app


def _command_name(ctx: click.Context) -> str:
    """``parseq db upgrade``: the command's words, however the program was started."""
    words: list[str] = []
    while ctx.parent is not None:
        words.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["parseq", *reversed(words)])


def app_with_db(**overrides: Any):  # type: ignore[no-untyped-def]
    """:func:`build_app` with its database schema created or migrated (``init_db``)."""

    app = build_app(**overrides)
    init_db(app)
    return app
