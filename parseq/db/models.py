"""Every table in one import: parsers, runs and their files, users, and the vocabulary they
use. Importing this module registers all of them on ``db`` (what migrations compare against)."""

from __future__ import annotations

from parseq.core.enums import (
    ACTIVE_STATUSES,
    NotebookEngine,
    OverlapPolicy,
    ParserKind,
    RunStatus,
    RunTrigger,
    ScheduleType,
)

# The other tables are registered on ``db`` by importing them here: migrations compare against all.
from parseq.db import code_models, notify_models, sessions, state_leases, tokens, workers  # noqa: F401
from parseq.db.base import Base, UTCDateTime, db, iso, kept_loaded, str_enum, utcnow
from parseq.db.parsers import NAME_RE, Parser, ScheduleSkip, notifications_dict
from parseq.db.runs import Run, RunFile
from parseq.db.users import User

__all__ = [
    "ACTIVE_STATUSES",
    "NAME_RE",
    "Base",
    "NotebookEngine",
    "OverlapPolicy",
    "Parser",
    "ParserKind",
    "Run",
    "RunFile",
    "RunStatus",
    "RunTrigger",
    "ScheduleSkip",
    "ScheduleType",
    "UTCDateTime",
    "User",
    "db",
    "iso",
    "kept_loaded",
    "notifications_dict",
    "str_enum",
    "utcnow",
]
