"""A notebook as a document: read and write the ``.ipynb`` JSON, and inject the run's
arguments as a cell (papermill's convention). Standard library only, and imported by the
notebook executor (:mod:`parseq.notebooks.nbexec`) in the parser's own interpreter.
"""

from __future__ import annotations

import json
import keyword
import math
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs an import at every run
    from typing import Any

try:  # imported as parseq.notebooks.nbdoc (Parseq itself, tests)
    from parseq.notebooks.nbsyntax import NotebookError
except ImportError:  # run through nbexec_launcher.py, which has this folder on sys.path
    from nbsyntax import NotebookError  # type: ignore[no-redef]

INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"


# --- JSON -------------------------------------------------------------------------------


def json_loads(text: str) -> Any:
    """``json.loads``."""
    return json.loads(text)


def json_dumps(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``; what JSON cannot hold is written as its
    ``repr`` (an output must never fail the run that made it)."""
    return json.dumps(value, ensure_ascii=False, default=repr)


# --- reading and preparing the notebook (pure) ----------------------------------------------


def load(path: str) -> dict[str, Any]:
    """The notebook's JSON, checked to be nbformat 4 with a list of cells."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise NotebookError(f"cannot read notebook {path}: {exc}") from None
    try:
        nb = json_loads(text)
    except ValueError as exc:
        raise NotebookError(f"notebook {path} is not valid JSON: {exc}") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"notebook {path} has no list of cells")
    if nb.get("nbformat") != 4:
        raise NotebookError(f"notebook {path} is nbformat {nb.get('nbformat')}, not 4")
    return nb


def source_of(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def tags_of(cell: dict[str, Any]) -> list[str]:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return [t for t in tags if isinstance(t, str)]


def python_literal(value: Any) -> str:
    """A Python expression for a JSON value (``repr`` except non-finite floats)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{python_literal(k)}: {python_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


def parameters_source(args: dict[str, Any]) -> str:
    """The injected cell: one assignment per argument whose name is a Python identifier.

    Other names (``max-pages``) are still in ``PARSEQ_ARGS`` and argv, so the SDK sees them.
    """
    lines = ["# Parameters injected by Parseq"]
    for name, value in args.items():
        if name.isidentifier() and not keyword.iskeyword(name):
            lines.append(f"{name} = {python_literal(value)}")
    return "\n".join(lines) + "\n"


def inject_parameters(nb: dict[str, Any], args: dict[str, Any]) -> int | None:
    """Insert the parameters cell after the one tagged ``parameters`` (or at the top); return
    its index. A cell injected by an earlier run (a re-used output notebook) is replaced.

    Without arguments nothing is inserted (None): an empty cell would shift every execution
    count against the notebook as authored (papermill's behaviour too)."""
    cells = [c for c in nb["cells"] if INJECTED_TAG not in tags_of(c)]
    if not args:
        nb["cells"] = cells
        return None
    at = next((i + 1 for i, c in enumerate(cells) if PARAMETERS_TAG in tags_of(c)), 0)
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": [INJECTED_TAG]},
        "outputs": [],
        "source": parameters_source(args),
    }
    if nb.get("nbformat_minor", 0) >= 5:  # cell ids exist from 4.5 on, and are required there
        cell["id"] = f"parseq-{os.urandom(6).hex()}"
    cells.insert(at, cell)
    nb["cells"] = cells
    return at


def args_from(environ: dict[str, str], argv: list[str]) -> dict[str, Any]:
    """Run arguments: ``PARSEQ_ARGS`` when set, else ``--key value`` pairs (values as JSON
    when they parse, else strings)."""
    if environ.get("PARSEQ_ARGS"):
        args = json_loads(environ["PARSEQ_ARGS"])
        return args if isinstance(args, dict) else {}
    args: dict[str, Any] = {}
    it = iter(argv)
    for flag in it:
        if flag.startswith("--"):
            raw = next(it, "true")
            try:
                args[flag[2:]] = json_loads(raw)
            except ValueError:
                args[flag[2:]] = raw
    return args


def open_run(
    argv: list[str], launcher: str
) -> tuple[str, str, list[str], dict[str, Any], dict[str, Any]] | None:
    """What both engines' launchers start from: the notebook's absolute path, the output path,
    the run's own argv, the loaded notebook and the run's args. None, said on stderr, when the
    argv or the notebook is unusable (the launcher then exits 2)."""
    if len(argv) < 2:
        print(f"usage: {launcher} NOTEBOOK OUTPUT_IPYNB [--key value ...]", file=sys.stderr)
        return None
    notebook_path, output_path, run_argv = os.path.abspath(argv[0]), argv[1], argv[2:]
    try:
        nb = load(notebook_path)
        args = args_from(dict(os.environ), run_argv)
    except (NotebookError, ValueError) as exc:
        print(f"parseq: {exc}", file=sys.stderr)
        return None
    return notebook_path, output_path, run_argv, nb, args


def save(nb: dict[str, Any], path: str) -> None:
    """Write the notebook atomically (a reader never sees half a file)."""
    tmp = f"{path}.tmp"
    # backslashreplace: a lone surrogate in captured output becomes a JSON \\u escape.
    with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(json_dumps(nb) + "\n")
    os.replace(tmp, path)
