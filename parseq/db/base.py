"""What every table shares: the ``db`` handle, UTC timestamps, enums stored as strings."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Session


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """A timestamp that always comes back timezone-aware UTC (SQLite stores it naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Parseq stores timezone-aware UTC only")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


@contextlib.contextmanager
def kept_loaded() -> Iterator[Session]:
    """``db.session`` with ``expire_on_commit`` off for the block: rows it loaded stay loaded
    across commits, where the default would reload each on its next use (a round trip)."""
    session = db.session()
    before, session.expire_on_commit = session.expire_on_commit, False
    try:
        yield session
    finally:
        session.expire_on_commit = before


def str_enum(cls: type[enum.Enum]) -> sa.Enum:
    # Stored as plain strings (no native PG enum) so adding a value needs no migration.
    return sa.Enum(
        cls,
        native_enum=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


def iso(value: datetime | None) -> str | None:
    """A timestamp as the API shows it: ISO 8601, or None."""
    return value.isoformat() if value else None
