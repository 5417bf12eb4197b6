"""The str enums of Parseq's vocabulary: run statuses and triggers, parser kinds, notebook
engines, schedule types. Plain values, so every package (the sandbox too) can speak them."""

from __future__ import annotations

import enum


class RunStatus(str, enum.Enum):
    """Where a run is in its life. The last four are final."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.PENDING, RunStatus.RUNNING)


ACTIVE_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)


class RunTrigger(str, enum.Enum):
    """What created a run."""

    MANUAL = "manual"
    SCHEDULE = "schedule"
    API = "api"


class ParserKind(str, enum.Enum):
    SCRIPT = "script"
    NOTEBOOK = "notebook"


class CodeSource(str, enum.Enum):
    """What created a parser code version."""

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
    """How a code version's content is stored: one file, or a folder parser as an archive."""

    PY = "py"
    IPYNB = "ipynb"
    ZIP = "zip"
    TAR_GZ = "tar.gz"

    @property
    def is_archive(self) -> bool:
        return self in (CodeFormat.ZIP, CodeFormat.TAR_GZ)


class NotebookEngine(str, enum.Enum):
    """How a notebook runs: in place without a kernel (fast), or by a Jupyter kernel."""

    FAST = "fast"
    KERNEL = "kernel"


class ScheduleType(str, enum.Enum):
    """APScheduler's three trigger types."""

    CRON = "cron"
    INTERVAL = "interval"
    DATE = "date"


class OverlapPolicy(str, enum.Enum):
    """What a due occurrence does while a run of the parser is pending or running."""

    SKIP = "skip"
    ALLOW = "allow"
