"""The ``admin_sessions`` table: logged-in admin browsers, by a hash of their session id
(:mod:`parseq.services.sessions`)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from parseq.db.base import UTCDateTime, db, utcnow


class AdminSession(db.Model):
    """One logged-in browser of an admin user."""

    __tablename__ = "admin_sessions"

    id_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
