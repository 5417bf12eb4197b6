"""What every ``parseq`` subcommand module shares: one-line errors and building the app.

It is its own module, rather than part of ``cli``, so that the subcommand modules
(``cli_envs``) need not import ``cli``: ``cli`` imports them to register their groups, and
``python -m parseq.cli`` runs ``cli`` as ``__main__``, where a cycle back to ``parseq.cli``
would load it a second time, half-initialized.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from parseq.errors import ParseqError


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
    from parseq.app import create_app
    from parseq.config import Config

    config = Config.from_env(**{k: v for k, v in overrides.items() if v is not None})
    return create_app(config)


def app_with_db(**overrides: Any):  # type: ignore[no-untyped-def]
    """:func:`build_app` with its database schema created or migrated (``init_db``)."""
    from parseq.app import init_db

    app = build_app(**overrides)
    init_db(app)
    return app
