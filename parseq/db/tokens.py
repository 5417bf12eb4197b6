"""The ``api_tokens`` table: REST API bearer tokens, stored by their hash
(:mod:`parseq.services.tokens` issues and checks them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from parseq.db.base import UTCDateTime, db, iso, utcnow


class ApiToken(db.Model):
    """A bearer token for the REST API. Only its hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    read_only: Mapped[bool] = mapped_column(default=False)
    revoked: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "read_only": self.read_only,
            "revoked": self.revoked,
            "created_at": iso(self.created_at),
            "last_used_at": iso(self.last_used_at),
        }
