"""Finding parsers on disk: path validation, script resolution, and registering shipped ones."""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path

from parseq.core.config import Config
from parseq.core.errors import ParseqError, ScriptNotFound, ValidationError
from parseq.db.models import NAME_RE, NotebookEngine, Parser, ParserKind, db
from parseq.envs import requirements as reqs
from parseq.notebooks import validate as notebooks

log = logging.getLogger(__name__)

SUFFIX = {ParserKind.SCRIPT: ".py", ParserKind.NOTEBOOK: ".ipynb"}


def root_for(config: Config, kind: ParserKind) -> Path:
    """The folder a parser of this kind has its path relative to."""
    return config.parsers_dir if kind is ParserKind.SCRIPT else config.notebooks_dir


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(
            "name must be 1-64 lowercase letters, digits, _ or -, starting with a letter or digit",
            field="name",
        )
    return name


def validate_path(config: Config, kind: ParserKind, rel: object) -> str:
    """Check that ``rel`` names an existing file of the right type inside its root; return it
    normalized. The API and the admin both save through it.

    Absolute paths, ``..``, symlinks leading out of the root and missing files are refused.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise ValidationError("path is required", field="path")
    root = root_for(config, kind)
    if "\0" in rel:
        raise ValidationError("path must not contain a NUL character", field="path")
    candidate = Path(rel.strip())
    if candidate.is_absolute() or ".." in candidate.parts:
        raise ValidationError(f"path must be relative to {root.name}/ without '..'", field="path")
    if candidate.suffix != SUFFIX[kind]:
        raise ValidationError(f"a {kind.value} path must end with {SUFFIX[kind]}", field="path")
    try:
        full = (root / candidate).resolve()
    except (OSError, RuntimeError) as exc:  # e.g. a name too long, a symlink loop
        raise ValidationError(f"path cannot be resolved: {exc}", field="path") from None
    if not full.is_relative_to(root):
        raise ValidationError(f"path leads outside {root.name}/", field="path")
    if not full.is_file():  # caught at save, not when the first run fails
        raise ValidationError(f"{root.name}/{candidate.as_posix()} does not exist", field="path")
    return candidate.as_posix()


def resolve_script(config: Config, parser: Parser) -> Path:
    """The absolute path of the parser's file, checked to exist inside its root."""
    root = root_for(config, parser.kind)
    full = (root / parser.path).resolve()
    if not full.is_relative_to(root):
        raise ScriptNotFound(f"{parser.kind.value} path {parser.path!r} leads outside {root}")
    if not full.is_file():
        raise ScriptNotFound(f"{parser.kind.value} {root.name}/{parser.path} does not exist")
    return full


@dataclass(frozen=True)
class Discovered:
    name: str
    path: str
    description: str
    kind: ParserKind = ParserKind.SCRIPT


def discover(config: Config) -> list[Discovered]:
    """Parsers shipped on disk: scripts in ``parsers/`` (``<name>.py`` or ``<name>/main.py``),
    then notebooks in ``notebooks/`` (``<name>.ipynb`` or ``<name>/main.ipynb``); ``_`` and
    ``.`` entries are skipped, and so is a notebook whose name a script already has."""
    found: list[Discovered] = []
    for kind in (ParserKind.SCRIPT, ParserKind.NOTEBOOK):
        root, suffix = root_for(config, kind), SUFFIX[kind]
        if not root.is_dir():
            continue
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            if entry.is_file() and entry.suffix == suffix:
                file, name = entry, entry.stem
            elif entry.is_dir() and (entry / f"main{suffix}").is_file():
                file, name = entry / f"main{suffix}", entry.name
            else:
                continue
            name = name.lower().replace(" ", "-")
            if not NAME_RE.match(name):
                continue
            if any(d.name == name for d in found):
                log.warning("%s not registered: a parser named %s exists", file, name)
                continue
            rel = file.relative_to(root).as_posix()
            if kind is ParserKind.SCRIPT:
                found.append(Discovered(name, rel, _docstring_summary(file)))
                continue
            try:
                nb = notebooks.validate_notebook(file, shown_as=f"{root.name}/{rel}")
            except ValidationError as exc:
                log.warning("%s not registered: %s", file, exc.message)
                continue
            found.append(Discovered(name, rel, notebooks.describe(nb), kind))
    return found


def _docstring_summary(script: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return ""
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ")


def sync_shipped(config: Config) -> list[Parser]:
    """Register shipped scripts and notebooks that have no parser yet; never overwrite a
    user's edits."""
    existing = {name for (name,) in db.session.execute(db.select(Parser.name))}
    added = []
    for item in discover(config):
        if item.name in existing:
            continue
        parser = Parser(
            name=item.name, kind=item.kind, path=item.path, description=item.description
        )
        db.session.add(parser)
        added.append(parser)
    db.session.commit()
    for parser in added:
        log.info("registered parser %s (%s)", parser.name, parser.path)
    return added


#: Where admin uploads were written before code versions (#21); parsers there still run.
UPLOADS_DIR = "uploads"
MAX_LISTED_FILES = 2000


def list_files(config: Config) -> list[tuple[ParserKind, str]]:
    """Scripts under ``parsers/`` and notebooks under ``notebooks/`` a parser can point at
    (relative paths; hidden and ``_``-prefixed files and folders skipped)."""
    found: list[tuple[ParserKind, str]] = []
    for kind in ParserKind:
        root = root_for(config, kind)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(f"*{SUFFIX[kind]}")):
            rel = path.relative_to(root)
            if any(part.startswith(("_", ".")) for part in rel.parts) or not path.is_file():
                continue
            found.append((kind, rel.as_posix()))
            if len(found) >= MAX_LISTED_FILES:
                return found
    return found


def set_enabled(parser: Parser, enabled: bool) -> Parser:
    """Enable or disable a parser (a disabled parser is not scheduled)."""
    parser.enabled = enabled
    db.session.commit()
    return parser


def parser_warnings(config: Config, parser: Parser) -> list[str]:
    """Warnings about a saved parser, for the admin's flash and the API's ``warnings``: the
    notebook syntax the fast engine does not run. Empty for scripts."""
    if parser.kind is not ParserKind.NOTEBOOK or not parser.path:
        return []
    if parser.engine is NotebookEngine.KERNEL:  # IPython itself runs every line
        return []
    try:
        nb = notebooks.check_parser_notebook(config, parser.path)
    except ParseqError as exc:  # the file changed since it was validated
        return [exc.message]
    return notebooks.syntax_warnings(nb)


def requirements_for(config: Config, parser: Parser, script: Path) -> reqs.Requirements:
    """The parser's requirements (:func:`parseq.envs.requirements.resolve`): a script in a
    folder of its own may bring a ``requirements.txt``; the kernel engine needs its kernel."""
    return reqs.resolve(
        config,
        field=parser.requirements,
        script=script,
        own_folder=script.parent != root_for(config, parser.kind),
        kernel=parser.kind is ParserKind.NOTEBOOK and parser.engine is NotebookEngine.KERNEL,
    )
