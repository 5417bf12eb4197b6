"""Notebook parsers: validating ``.ipynb`` files and the command that executes one.

The execution itself is :mod:`parseq.notebooks.nbexec`, run by the parser's interpreter like a script
(same sandbox, same virtualenv, no Jupyter kernel). This side uses ``nbformat`` to check a
notebook when a parser is saved, so a broken file is a form/API error, not a failed run.
"""

from __future__ import annotations

from parseq.core.argv import build_command as run_command

import ast
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat

from parseq.notebooks import nbdoc, nbexec, nbsyntax
from parseq.core.config import Config
from parseq.core.errors import ParseqError, ValidationError
from parseq.core.enums import NotebookEngine

#: Run as ``<interpreter> nbexec_launcher.py <notebook> <output> --key value ...``.
EXECUTOR = Path(nbexec.__file__).resolve().with_name("nbexec_launcher.py")
#: The kernel engine's, run the same way (:mod:`parseq.notebooks.nbkernel`, nbclient in the parser's env).
KERNEL_EXECUTOR = EXECUTOR.with_name("nbkernel_launcher.py")
#: Name of the executed notebook among a run's files.
OUTPUT_NOTEBOOK = "output.ipynb"


def build_command(
    interpreter: Path | str,
    notebook: Path | str,
    output_path: Path | str,
    args: Mapping[str, Any],
    positional: Sequence[Any] = (),
    engine: NotebookEngine = NotebookEngine.FAST,
) -> list[str]:
    """The argv of a notebook run: the engine's executor, the notebook, where to write the
    executed copy, then the run args and positionals exactly as a script gets them."""
    executor = KERNEL_EXECUTOR if engine is NotebookEngine.KERNEL else EXECUTOR
    argv = run_command(interpreter, executor, args, positional)
    argv[2:2] = [str(notebook), str(output_path)]
    return argv


def validate_notebook(path: Path, shown_as: str | None = None) -> nbformat.NotebookNode:
    """Read and validate a notebook file; raise :class:`ValidationError` (field ``path``)
    saying what is wrong: missing, not JSON, not nbformat 4, or not matching the schema."""
    name = shown_as or path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError(f"notebook {name} does not exist", field="path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"notebook {name} cannot be read: {exc}", field="path") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"notebook {name} is not valid JSON: {exc}", field="path") from None
    if not isinstance(raw, dict):
        raise ValidationError(f"notebook {name} is not a notebook (no JSON object)", field="path")
    if raw.get("nbformat") != 4:
        raise ValidationError(
            f"notebook {name} is nbformat {raw.get('nbformat')!r}; Parseq runs nbformat 4 "
            "(open and save it in a current Jupyter to convert it)",
            field="path",
        )
    nb = nbformat.from_dict(raw)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns about missing cell ids; not fatal
            nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        where = "/".join(str(p) for p in getattr(exc, "absolute_path", ()))
        message = getattr(exc, "message", str(exc)).split("\n", 1)[0][:300]
        raise ValidationError(
            f"notebook {name} does not match the nbformat 4 schema"
            + (f" at {where}" if where else "")
            + f": {message}",
            field="path",
        ) from None
    meta = nb.get("metadata", {})
    language = meta.get("kernelspec", {}).get("language") or meta.get("language_info", {}).get(
        "name"
    )
    if isinstance(language, str) and language.lower() != "python":
        raise ValidationError(
            f"notebook {name} is written in {language}; Parseq runs Python notebooks",
            field="path",
        )
    return nb


def check_parser_notebook(config: Config, rel: str) -> nbformat.NotebookNode:
    """Validate the notebook a parser's path (already checked by
    :func:`parseq.services.registry.validate_path`) points at, under ``notebooks_dir``."""
    root = config.notebooks_dir
    return validate_notebook(root / rel, shown_as=f"{root.name}/{rel}")


def describe(nb: Mapping[str, Any]) -> str:
    """A description from the first markdown cell: its first paragraph that is not a heading
    (the heading when there is nothing else), as the docstring is for scripts."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        paragraphs = [p.strip() for p in nbdoc.source_of(cell).split("\n\n") if p.strip()]
        prose = [p for p in paragraphs if not p.startswith("#")]
        chosen = prose[0] if prose else paragraphs[0].lstrip("#").strip() if paragraphs else ""
        return " ".join(chosen.split())[:500]
    return ""


def syntax_warnings(nb: Mapping[str, Any]) -> list[str]:
    """What the fast engine would refuse, cell by cell, in the words of the run's error
    ("cell 3: magic %prun is not supported..."): said when the parser is saved, not at its
    first run. Cells are numbered as authored (markdown too), as in run errors."""
    found = []
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    for position, cell in enumerate(nb.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        label, source = f"cell {position}", nbdoc.source_of(cell)
        try:
            try:
                compile(source, f"<{label}>", "exec", flags=flags, dont_inherit=True)
            except SyntaxError:
                translated = nbsyntax.translate(source, label)
                compile(translated, f"<{label}>", "exec", flags=flags, dont_inherit=True)
        except nbsyntax.NotebookError as exc:
            found.append(str(exc))
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None)
            found.append(
                f"{label}: {type(exc).__name__}: {getattr(exc, 'msg', exc)}"
                + (f" (line {line})" if line else "")
            )
    return found
