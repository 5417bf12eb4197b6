"""IPython-only lines in notebook cells (``!cmd``, ``%magic``), without IPython.

Part of the notebook executor (:mod:`parseq.nbexec`): standard library only, runs in the
parser's interpreter. A few lines have a plain-Python meaning and are rewritten; the rest are
refused with a message naming the cell, so a run fails clearly instead of half-working.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PIP_INSTALL_RE = (
    r"^\s*(?:!|%{1,2})\s*(?:\S*python\S*\s+-m\s+)?(?:pip3?|conda|mamba|micromamba|uv\s+pip)"
    r"\s+install\b"
)
#: Magics with no effect outside a kernel's display machinery: skipped.
NOOP_MAGICS = frozenset({"matplotlib", "autoreload", "load_ext", "config", "precision"})


class NotebookError(Exception):
    """The notebook cannot be read or contains IPython syntax that is not supported."""


def translate(source: str, label: str) -> str:
    """Rewrite IPython-only lines (``!cmd``, ``%magic``) into Python, or refuse them.

    Called only when the cell does not compile as Python, so strings that happen to start a
    line with ``!`` or ``%`` are left alone.
    """
    import re

    if source.lstrip().startswith("%%"):
        magic = source.lstrip()[2:].split(None, 1)[0] if source.strip() != "%%" else ""
        raise NotebookError(f"{label}: cell magic %%{magic} is not supported by Parseq")
    out = []
    for line in source.split("\n"):
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
                    "(no !!, no {variable} expansion); use subprocess instead"
                )
            out.append(f"{indent}__parseq_shell__({command!r})")
        elif stripped.startswith("%"):
            name, _, rest = stripped[1:].partition(" ")
            if name in NOOP_MAGICS:
                out.append(f"{indent}pass  # {stripped}")
            elif name == "env" and "=" in rest:
                key, _, value = rest.strip().partition("=")
                out.append(f"{indent}__import__('os').environ[{key.strip()!r}] = {value.strip()!r}")
            else:
                raise NotebookError(
                    f"{label}: magic %{name} is not supported by Parseq (no IPython "
                    "kernel runs the notebook); write it as Python"
                )
        elif re.match(r"^\w+\s*=\s*!", stripped):
            raise NotebookError(
                f"{label}: {stripped!r}: capturing !command output is not supported; "
                "use subprocess.run(..., capture_output=True)"
            )
        else:
            out.append(line)
    return "\n".join(out)


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
