"""The table of parser code versions (``parseq.services.code_store``): every change of a
parser's code or of its resolved requirements is a new row; the content lives in storage under
its hash."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from parseq.core.enums import CodeFormat, CodeSource, ParserKind
from parseq.db.base import UTCDateTime, db, iso, str_enum, utcnow
from parseq.db.parsers import Parser


class CodeVersion(db.Model):
    """One version of a parser's code, numbered 1, 2, ... per parser."""

    __tablename__ = "code_versions"
    __table_args__ = (sa.UniqueConstraint("parser_id", "number", name="uq_code_versions_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    parser_id: Mapped[int] = mapped_column(sa.ForeignKey("parsers.id", ondelete="CASCADE"))
    number: Mapped[int]
    #: Of the stored content; also its storage key (``code/<sha256>``) and its cache folder.
    sha256: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[ParserKind] = mapped_column(str_enum(ParserKind))
    format: Mapped[CodeFormat] = mapped_column(str_enum(CodeFormat))
    #: The name it is downloaded as (``x.py``, ``x.ipynb``, ``x.zip``).
    filename: Mapped[str] = mapped_column(sa.String(255))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    source: Mapped[CodeSource] = mapped_column(str_enum(CodeSource))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The parser's normalized requirement lines this version was locked from.
    requirements_in: Mapped[str] = mapped_column(sa.Text, default="")
    #: ``uv pip compile --generate-hashes`` of them: what every worker installs. Empty when
    #: the parser has no requirements.
    requirements_lock: Mapped[str] = mapped_column(sa.Text, default="")

    parser: Mapped[Parser] = relationship()

    def __str__(self) -> str:
        return f"{self.parser.name} v{self.number}"

    def to_dict(self) -> dict[str, Any]:
        """The version as the API shows it."""
        return {
            "parser": self.parser.name,
            "version": self.number,
            "sha256": self.sha256,
            "kind": self.kind.value,
            "format": self.format.value,
            "filename": self.filename,
            "size": self.size,
            "source": self.source.value,
            "created_at": iso(self.created_at),
            "requirements_lock": self.requirements_lock,
        }
