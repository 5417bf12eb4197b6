"""IPython-only lines in notebook cells (``!cmd``, ``%magic``), without IPython.

Part of the notebook executor (:mod:`parseq.notebooks.nbexec`): standard library only, runs in the
parser's interpreter. A few lines have a plain-Python meaning and are rewritten; the rest are
refused with a message naming the cell, so a run fails clearly instead of half-working.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: ``!pip install``, ``%pip install``, and a bare ``pip install`` (IPython's automagic).
PIP_INSTALL_RE = (
    r"^\s*(?:!|%{1,2})?\s*(?:\S*python\S*\s+-m\s+)?(?:pip3?|conda|mamba|micromamba|uv\s+pip)"
    r"\s+install\b"
)
#: Magics with no effect outside a kernel's display machinery: skipped.
NOOP_MAGICS = frozenset({"matplotlib", "autoreload", "load_ext", "config", "precision"})
#: Magics the fast engine runs (:mod:`parseq.notebooks.nbmagic`), line and cell ones.
LINE_MAGICS = frozenset({"time", "timeit", "cd", "pwd", "env", "who"})
CELL_MAGICS = frozenset({"time", "timeit", "capture", "writefile"})
KERNEL_HINT = "or set the parser's engine to kernel (a real IPython kernel runs it)"


class NotebookError(Exception):
    """The notebook cannot be read or contains IPython syntax that is not supported."""


def translate(source: str, label: str) -> str:
    """Rewrite IPython-only lines (``!cmd``, ``%magic``, ``%%magic``) into Python, or refuse
    them with a message naming the cell.

    Called only when the cell does not compile as Python, so strings that happen to start a
    line with ``!`` or ``%`` are left alone.
    """
    if source.lstrip().startswith("%%"):
        first, _, body = source.lstrip()[2:].partition("\n")
        name, _, arg = first.partition(" ")
        if name not in CELL_MAGICS:
            raise NotebookError(
                f"{label}: cell magic %%{name} is not supported by the fast engine; write "
                f"it as Python, {KERNEL_HINT}"
            )
        return f"__parseq_cell_magic__({name!r}, {arg!r}, {body!r})"
    return "\n".join(_line(line, label) for line in source.split("\n"))


def _line(line: str, label: str) -> str:
    """One line of a cell, in Python."""
    import re

    stripped = line.lstrip()
    indent = line[: len(line) - len(stripped)]
    if re.match(PIP_INSTALL_RE, line):
        raise NotebookError(
            f"{label}: {stripped!r} is not run by Parseq: list the packages in the "
            "parser's requirements instead (they are installed into its virtualenv before "
            "the run) and remove this line"
        )
    if stripped.startswith("!"):
        command = stripped[1:].strip()
        if command.startswith("!") or "{" in command:
            raise NotebookError(
                f"{label}: {stripped!r}: only plain !commands are supported "
                f"(no !!, no {{variable}} expansion); use subprocess instead, {KERNEL_HINT}"
            )
        return f"{indent}__parseq_shell__({command!r})"
    if stripped.startswith("%"):
        name, _, rest = stripped[1:].partition(" ")
        if name in NOOP_MAGICS:
            return f"{indent}pass  # {stripped}"
        if name in LINE_MAGICS:
            return f"{indent}__parseq_magic__({name!r}, {rest!r})"
        raise NotebookError(
            f"{label}: magic %{name} is not supported by the fast engine; write it as "
            f"Python, {KERNEL_HINT}"
        )
    if re.match(r"^\w+\s*=\s*!", stripped):
        raise NotebookError(
            f"{label}: {stripped!r}: capturing !command output is not supported; "
            f"use subprocess.run(..., capture_output=True), {KERNEL_HINT}"
        )
    if re.match(r"^(\?{1,2}[\w.]+|[\w.\[\]'\"()]+\?{1,2})\s*$", stripped):
        raise NotebookError(
            f"{label}: {stripped!r}: IPython help (obj?) is not supported by the fast "
            f"engine; remove the line, {KERNEL_HINT}"
        )
    return line


def check_shell_command(command: str, namespace: dict[str, Any]) -> None:
    """Refuse ``$name`` in a ``!command`` when ``name`` is a Python variable: IPython would
    put its value there, the shell would not (plain ``$HOME`` goes to the shell as is)."""
    import re

    for name in re.findall(r"\$\{?([A-Za-z_]\w*)", command):
        if name in namespace:
            raise NotebookError(
                f"!{command}: ${name} names a Python variable; IPython variable expansion "
                "is not supported, use subprocess instead"
            )
