"""Admin sessions kept on the server, so that logging out really ends them.

The session cookie is signed but carries no state of its own worth trusting after logout: it
holds a random session id, and a request is logged in only while that id has a row here.
Logging out deletes the row; a password change or reset and "log out everywhere" delete every
row of the user. A row also ends after ``PARSEQ_SESSION_IDLE_TIMEOUT_S`` without a request and
``PARSEQ_SESSION_MAX_AGE_S`` after login, whatever the cookie says. Only a hash of the id is
stored, so a copy of the database opens no session.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa

from parseq.core.config import Config
from parseq.db.models import db, utcnow
from parseq.db.sessions import AdminSession

#: ``last_seen_at`` is written at most this often per session, so most requests only read.
TOUCH_INTERVAL = timedelta(seconds=30)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start(user_id: int, config: Config) -> str:
    """A new session of ``user_id``; returns its id (for the cookie, never stored plain)."""
    end_expired(user_id, config)
    session_id = secrets.token_urlsafe(32)
    db.session.add(AdminSession(id_hash=_hash(session_id), user_id=user_id))
    db.session.commit()
    return session_id


def is_live(session_id: str | None, user_id: int, config: Config) -> bool:
    """Whether ``session_id`` is a session of ``user_id`` that has not ended or expired; marks
    it as used now (for the idle timeout)."""
    if not session_id:
        return False
    row = db.session.get(AdminSession, _hash(session_id))
    if row is None or row.user_id != user_id:
        return False
    now = utcnow()
    if _expired(row, now, config):
        db.session.delete(row)
        db.session.commit()
        return False
    if now - row.last_seen_at > TOUCH_INTERVAL:
        row.last_seen_at = now
        db.session.commit()
    return True


def _expired(row: AdminSession, now: datetime, config: Config) -> bool:
    return now - row.created_at > timedelta(seconds=config.session_max_age_s) or (
        now - row.last_seen_at > timedelta(seconds=config.session_idle_timeout_s)
    )


def end(session_id: str | None) -> None:
    """End one session (logout)."""
    if session_id:
        db.session.execute(sa.delete(AdminSession).where(AdminSession.id_hash == _hash(session_id)))
        db.session.commit()


def end_all(user_id: int) -> int:
    """End every session of ``user_id`` (log out everywhere, password change); how many."""
    result = db.session.execute(sa.delete(AdminSession).where(AdminSession.user_id == user_id))
    db.session.commit()
    return int(result.rowcount or 0)


def end_expired(user_id: int, config: Config) -> None:
    """Drop the user's expired sessions, so the table holds live ones only (run at login)."""
    now = utcnow()
    db.session.execute(
        sa.delete(AdminSession).where(
            AdminSession.user_id == user_id,
            sa.or_(
                AdminSession.created_at < now - timedelta(seconds=config.session_max_age_s),
                AdminSession.last_seen_at < now - timedelta(seconds=config.session_idle_timeout_s),
            ),
        )
    )
