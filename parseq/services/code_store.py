"""Parser code, stored centrally and versioned: the rules the admin, the API and the start-up
sync share.

Every change of a parser's code (an upload, a file changed in ``parsers/`` or ``notebooks/``)
or of its resolved requirements is a new :class:`CodeVersion`, numbered per parser. Content
goes to storage under its sha256 (``code/<sha256>``: local storage in the embedded default,
the bucket on services), so any worker can fetch it (:mod:`parseq.worker.code`); nothing is
written into the source tree. A run records the version it was created with.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from parseq.core.config import Config
from parseq.core.enums import CodeFormat, CodeSource, ParserKind
from parseq.core.errors import Conflict, NotFound, ParseqError, ValidationError
from parseq.db.code_models import CodeVersion
from parseq.db.models import Parser, db
from parseq.envs import lock as code_lock
from parseq.notebooks import validate as notebooks
from parseq.sandbox import limits as sandbox
from parseq.services import registry
from parseq.services.registry import resolve_script, root_for, validate_name
from parseq.storage import code_archive, code_cache
from parseq.storage.base import Storage
from parseq.storage.code_cache import storage_key

log = logging.getLogger(__name__)


def limits(config: Config) -> code_archive.Limits:
    return code_archive.Limits(
        config.code_max_bytes, config.code_max_unpacked_bytes, config.code_max_files
    )


def save_code(
    config: Config,
    storage: Storage,
    parser: Parser,
    data: bytes,
    source: CodeSource,
    filename: str = "",
    content_type: str = "",
) -> CodeVersion:
    """Validate uploaded code, make it the parser's current version and detach the parser from
    any file on disk; the kind follows the content. Flushed, not committed."""
    fmt = code_archive.detect(data, filename, content_type)
    parser.path = ""
    return _store(config, storage, parser, data, fmt, source)


def refresh(config: Config, storage: Storage, parser: Parser) -> CodeVersion | None:
    """After a parser is saved: a new version when its file on disk changed (a parser with a
    path) or its requirements need a new lock; None for a parser with neither a file nor stored
    code. Flushed, not committed."""
    if parser.kind is None:  # a new parser, before the column default applies
        parser.kind = ParserKind.SCRIPT
    if parser.path:
        return snapshot_path(config, storage, parser, CodeSource.SYNC)
    if parser.code_version is None:
        return None
    current = get_version(parser)
    data = b"".join(storage.iter_bytes(storage_key(current.sha256)))
    return _store(config, storage, parser, data, current.format, CodeSource.EDIT)


def snapshot_path(
    config: Config, storage: Storage, parser: Parser, source: CodeSource
) -> CodeVersion:
    """The parser's file in ``parsers/`` or ``notebooks/`` (a folder parser: its folder, as a
    reproducible ``.tar.gz``) as its current version; the current one when nothing changed."""
    script = resolve_script(config, parser)
    folder = script.parent
    if script.name in code_archive.MAINS.values() and folder != root_for(config, parser.kind):
        data, fmt = code_archive.pack_folder(folder), CodeFormat.TAR_GZ
    else:
        data = script.read_bytes()
        fmt = CodeFormat.PY if parser.kind is ParserKind.SCRIPT else CodeFormat.IPYNB
    return _store(config, storage, parser, data, fmt, source)


def _store(
    config: Config,
    storage: Storage,
    parser: Parser,
    data: bytes,
    fmt: CodeFormat,
    source: CodeSource,
) -> CodeVersion:
    """Unpack and check ``data``, lock the requirements it declares, and record a version
    unless the current one has the same content and lock."""
    validate_name(parser.name)
    sha = hashlib.sha256(data).hexdigest()
    filename = f"{parser.name}.{fmt.value}"
    staging = code_cache.staging_dir(config)
    try:
        unpacked = code_archive.unpack(data, fmt, staging, filename, limits(config))
        script = staging / unpacked.script
        if unpacked.kind is ParserKind.NOTEBOOK:
            _check_notebook(script)
        parser.kind = unpacked.kind
        lines = _requirement_lines(config, parser, script)
        requirements_in = "\n".join(lines)
        current = current_version(parser)
        if current and (current.sha256, current.requirements_in) == (sha, requirements_in):
            return current  # before locking: an unchanged save resolves nothing
        lock = _lock(config, lines)
        if not storage.exists(storage_key(sha)):
            blob = staging.parent / f"{staging.name}.blob"
            blob.write_bytes(data)
            try:
                storage.put(storage_key(sha), blob)
            finally:
                blob.unlink(missing_ok=True)
        code_cache.install(config, staging, sha)  # this machine has it unpacked already
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _add_version(parser, sha, fmt, filename, len(data), source, requirements_in, lock)


def _check_notebook(path: Path) -> None:
    try:
        notebooks.validate_notebook(path, shown_as=path.name)
    except ValidationError as exc:
        raise ValidationError(exc.message, field=code_archive.FIELD) from None


def _requirement_lines(config: Config, parser: Parser, script: Path) -> list[str]:
    """The parser's normalized requirement lines (its field, ``requirements.txt``, PEP 723)."""
    try:
        return registry.requirements_for(config, parser, script).lines
    except ValidationError as exc:
        raise ValidationError(exc.message, field="requirements") from None


def _lock(config: Config, lines: list[str]) -> str:
    """The lock of ``lines`` when locking is on and there are any; else empty."""
    if not config.lock_requirements or not lines:
        return ""
    return code_lock.lock(config, lines, sandbox.base_python(config))


def _add_version(
    parser: Parser,
    sha: str,
    fmt: CodeFormat,
    filename: str,
    size: int,
    source: CodeSource,
    requirements_in: str,
    lock: str,
) -> CodeVersion:
    db.session.add(parser)
    db.session.flush()  # a new parser gets its id
    last = db.session.execute(
        db.select(db.func.max(CodeVersion.number)).where(CodeVersion.parser_id == parser.id)
    ).scalar()
    version = CodeVersion(
        parser=parser,
        number=(last or 0) + 1,
        sha256=sha,
        kind=parser.kind,
        format=fmt,
        filename=filename,
        size=size,
        source=source,
        requirements_in=requirements_in,
        requirements_lock=lock,
    )
    db.session.add(version)
    parser.code_version = version.number
    try:
        db.session.flush()
    except IntegrityError:  # another save of this parser took the number first
        db.session.rollback()
        raise Conflict(
            f"another version of parser {parser.name!r} was saved at the same time; try again",
            parser=parser.name,
        ) from None
    log.info("parser %s: code version %d (%s, %s)", parser.name, version.number, source.value, sha)
    return version


def current_version(parser: Parser) -> CodeVersion | None:
    if parser.code_version is None or parser.id is None:
        return None
    return find_version(parser.id, parser.code_version)


def find_version(parser_id: int, number: int) -> CodeVersion | None:
    return db.session.execute(
        db.select(CodeVersion).filter_by(parser_id=parser_id, number=number)
    ).scalar_one_or_none()


def get_version(parser: Parser, number: int | None = None) -> CodeVersion:
    """A version of the parser (its current one by default); 404 when it has none."""
    wanted = parser.code_version if number is None else number
    version = find_version(parser.id, wanted) if wanted is not None else None
    if version is None:
        what = f"version {number}" if number is not None else "stored code"
        raise NotFound(f"parser {parser.name!r} has no {what}", parser=parser.name)
    return version


def list_versions(parser: Parser) -> list[CodeVersion]:
    return list(
        db.session.execute(
            db.select(CodeVersion)
            .filter_by(parser_id=parser.id)
            .order_by(CodeVersion.number.desc())
        ).scalars()
    )


def read(storage: Storage, version: CodeVersion) -> Iterator[bytes]:
    """The version's content, streamed from storage."""
    return storage.iter_bytes(storage_key(version.sha256))


def sync_versions(config: Config, storage: Storage) -> list[CodeVersion]:
    """Start-up sync: a new version for each parser whose file in ``parsers/`` or
    ``notebooks/`` is new or changed. A parser whose file is missing or invalid keeps its
    versions (and is logged)."""
    added = []
    parsers = db.session.execute(db.select(Parser).where(Parser.path != "")).scalars().all()
    for parser in parsers:
        before = parser.code_version
        try:
            version = snapshot_path(config, storage, parser, CodeSource.SYNC)
        except (ParseqError, OSError) as exc:
            db.session.rollback()
            # One line: the parser keeps running its file from disk until a sync succeeds.
            first = str(getattr(exc, "message", exc)).strip().splitlines()[0]
            log.warning("parser %s: code not stored, runs its file: %s", parser.name, first)
            continue
        db.session.commit()
        if version.number != before:
            added.append(version)
    return added


def sync(config: Config, storage: Storage) -> list[Parser]:
    """Start-up: register new parsers found in ``parsers/`` and ``notebooks/``, then store
    each new or changed file as a code version. Returns the parsers registered."""
    added = registry.sync_shipped(config)
    sync_versions(config, storage)
    return added
