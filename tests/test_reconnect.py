"""retry_db: database work retried across a lost connection, and only then."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from parseq.db.reconnect import is_disconnect, retry_db


def _lost() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))


def test_retries_until_the_database_answers(sqlite_app: Flask) -> None:
    calls = []

    def work() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _lost()
        return "done"

    assert retry_db(work, deadline_s=10) == "done"
    assert len(calls) == 3


def test_gives_up_after_the_deadline(sqlite_app: Flask) -> None:
    def work() -> None:
        raise _lost()

    with pytest.raises(sa.exc.OperationalError):
        retry_db(work, deadline_s=0.3)


def test_a_bad_query_is_not_retried(sqlite_app: Flask) -> None:
    calls = []

    def work() -> None:
        calls.append(1)
        raise sa.exc.IntegrityError("INSERT", {}, Exception("unique"))

    with pytest.raises(sa.exc.IntegrityError):
        retry_db(work, deadline_s=10)
    assert len(calls) == 1
    assert is_disconnect(_lost()) and not is_disconnect(ValueError())
