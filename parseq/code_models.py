"""The table of parser code versions (``parseq.code_store``): every change of a parser's code or
of its resolved requirements is a new row; the content lives in storage under its hash."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from parseq.models import Parser, ParserKind, UTCDateTime, _iso, _str_enum, db, utcnow


class CodeSource(str, enum.Enum):
    """What created a code version."""

    #: A file uploaded in the admin's parser form.
    UPLOAD = "upload"
    #: ``PUT /api/v1/parsers/<name>/code``.
    API = "api"
    #: A file in ``parsers/`` or ``notebooks/``, found new or changed (start-up, or a save
    #: that points a parser at it).
    SYNC = "sync"
    #: The admin form's code editor, or a requirements change (the same code, a new lock).
    EDIT = "edit"


class CodeFormat(str, enum.Enum):
    """How a version's content is stored: one file, or a folder parser as an archive."""

    PY = "py"
    IPYNB = "ipynb"
    ZIP = "zip"
    TAR_GZ = "tar.gz"

    @property
    def is_archive(self) -> bool:
        return self in (CodeFormat.ZIP, CodeFormat.TAR_GZ)


class CodeVersion(db.Model):
    """One version of a parser's code, numbered 1, 2, ... per parser."""

    __tablename__ = "code_versions"
    __table_args__ = (sa.UniqueConstraint("parser_id", "number", name="uq_code_versions_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    parser_id: Mapped[int] = mapped_column(sa.ForeignKey("parsers.id", ondelete="CASCADE"))
    number: Mapped[int]
    #: Of the stored content; also its storage key (``code/<sha256>``) and its cache folder.
    sha256: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[ParserKind] = mapped_column(_str_enum(ParserKind))
    format: Mapped[CodeFormat] = mapped_column(_str_enum(CodeFormat))
    #: The name it is downloaded as (``x.py``, ``x.ipynb``, ``x.zip``).
    filename: Mapped[str] = mapped_column(sa.String(255))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    source: Mapped[CodeSource] = mapped_column(_str_enum(CodeSource))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The parser's normalized requirement lines this version was locked from.
    requirements_in: Mapped[str] = mapped_column(sa.Text, default="")
    #: ``uv pip compile --generate-hashes`` of them: what every worker installs. Empty when
    #: the parser has no requirements.
    requirements_lock: Mapped[str] = mapped_column(sa.Text, default="")

    parser: Mapped[Parser] = relationship()

    def __str__(self) -> str:
        return f"{self.parser.name} v{self.number}"

    @property
    def storage_key(self) -> str:
        return storage_key(self.sha256)

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
            "created_at": _iso(self.created_at),
            "requirements_lock": self.requirements_lock,
        }


def storage_key(sha256: str) -> str:
    """Where content with this hash is stored (shared by every parser that has it)."""
    return f"code/{sha256}"
