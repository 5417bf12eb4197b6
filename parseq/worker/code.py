"""The code a run executes: its version's folder on this machine (fetched once per content
hash, :mod:`parseq.storage.code_cache`) or, for a parser with no stored code, its file on this
disk; and the requirement lines its env is built from (the version's lock).

A cache hit costs a directory check: the version's row comes with the run the worker claims
(``Run.code``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from parseq.core.config import Config
from parseq.db.code_models import CodeVersion
from parseq.db.models import Parser
from parseq.envs import requirements as reqs
from parseq.services.registry import requirements_for as declared_requirements
from parseq.services.registry import resolve_script, root_for
from parseq.storage import code_archive, code_cache
from parseq.storage.base import Storage
from parseq.worker import collect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunCode:
    """What a run executes: its entry point, the folder shipped with it (a folder parser's),
    and its code version (None: a parser with no stored code runs the file on this disk)."""

    script: Path
    folder: Path | None
    version: CodeVersion | None


def for_run(config: Config, storage: Storage, parser: Parser, row: CodeVersion | None) -> RunCode:
    """The code of a run of ``parser`` at version ``row`` (the run's ``code``), on this
    machine."""
    if row is None:
        script = resolve_script(config, parser)
        return RunCode(script, collect.folder_of(script, root_for(config, parser.kind)), None)
    folder = code_cache.folder_for(config, storage, row.sha256, row.format, row.filename)
    script = folder / code_archive.script_name(row.format, row.kind, row.filename)
    return RunCode(script, folder if row.format.is_archive else None, row)


def requirements_for(config: Config, parser: Parser, code: RunCode) -> reqs.Requirements:
    """The requirement lines a run's env is built from: its version's lock when the parser's
    requirements are still those it was locked from (they are, unless changed around the
    admin and API), else the declared lines as they are."""
    found = declared_requirements(config, parser, code.script)
    wanted = code.version
    if wanted is None or not config.lock_requirements or not found.lines:
        return found
    if "\n".join(found.lines) != wanted.requirements_in or not wanted.requirements_lock:
        log.warning("parser %s v%d: requirements changed since locked", parser.name, wanted.number)
        return found
    return reqs.Requirements(_parsed_lock(wanted.requirements_lock), "lock")


@functools.lru_cache(maxsize=256)
def _parsed_lock(text: str) -> tuple[str, ...]:
    # Locks are written by Parseq from lines the policy allowed when the version was saved.
    return reqs.parse(text, reqs.Policy(allow_unsafe=True), "requirements lock")
