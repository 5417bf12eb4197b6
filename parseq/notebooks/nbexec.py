"""Execute a notebook's code cells in one namespace, in this process, without a Jupyter kernel.

Parseq runs it with the parser's own interpreter (its virtualenv), through
``nbexec_launcher.py``, so it uses the standard library only and reads and writes the
``.ipynb`` JSON itself (:mod:`parseq.notebooks.nbdoc`)::

    python nbexec_launcher.py NOTEBOOK OUTPUT_IPYNB [--key value ...]

Run arguments come from ``PARSEQ_ARGS`` (JSON; the ``--key value`` argv when it is unset) and
are injected as a new cell after the cell tagged ``parameters`` (papermill's convention), or
at the top. Each executed cell records its stdout/stderr, the value of its last expression and
its execution count; a failing cell records its traceback, later cells stay unexecuted, and the
process exits 1 with a last stderr line naming the cell. Starting a kernel costs seconds
(papermill's way); running the cells in place costs far less (bench/notebooks.py).
Exit status: 0 every cell ran, 1 a cell failed, 2 the notebook could not be read.
"""

from __future__ import annotations

import _ast  # ast's node classes and flags without importing ast (see the note below)
import builtins
import os
import sys
import time
import types

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs an import at every run
    import asyncio
    from typing import Any

# Every import here is paid by every run, in a virtualenv where nothing else is loaded yet. The
# Python halves of json, signal, ast and linecache pull in re, enum and tokenize, which cost
# about what the interpreter's own start does (bench/notebooks.py). So the C halves do the common work,
# and the full modules (and asyncio, subprocess, traceback) are imported where needed.
try:
    import _signal as signals
except ImportError:  # not CPython
    import signal as signals  # type: ignore[no-redef]
CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect

try:  # imported as parseq.notebooks.nbexec (Parseq itself, tests)
    from parseq.notebooks.nbdisplay import Display, install_hooks, mime_bundle
    from parseq.notebooks.nbdoc import inject_parameters, open_run, save, source_of
    from parseq.notebooks.nbmagic import Captured, Magics
    from parseq.notebooks.nbsyntax import NotebookError, check_shell_command, translate
except ImportError:  # run through nbexec_launcher.py, which has this folder on sys.path
    from nbdisplay import Display, install_hooks, mime_bundle  # type: ignore[no-redef]
    from nbdoc import inject_parameters, open_run, save, source_of  # type: ignore[no-redef]
    from nbmagic import Captured, Magics  # type: ignore[no-redef]
    from nbsyntax import NotebookError, check_shell_command, translate  # type: ignore[no-redef]

#: Cells compile under the file name ``<cell 3>``; tracebacks start at the first such frame.
CELL_FILENAME = "<cell "
#: Text kept per cell and stream in ``output.ipynb``; the run log keeps everything (capped).
MAX_CELL_OUTPUT_CHARS = 1_000_000


class Terminated(BaseException):
    """SIGTERM arrived (timeout or cancel): stop the current cell and save what ran."""


# --- running cells --------------------------------------------------------------------------


class CellOutputs:
    """Outputs of one cell in the order they were produced; stream text capped."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.chars = {"stdout": 0, "stderr": 0}

    def stream(self, name: str, text: str) -> None:
        room = MAX_CELL_OUTPUT_CHARS - self.chars[name]
        if room <= 0 or not text:
            return
        if len(text) > room:
            text = text[:room] + f"\n[parseq: {name} of this cell cut at {room} characters]\n"
        self.chars[name] += len(text)
        last = self.items[-1] if self.items else None
        if last and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.items.append({"output_type": "stream", "name": name, "text": text})

    def data(self, obj: Any, execution_count: int) -> None:
        """The value of the cell's last expression, as its ``Out[n]``."""
        data, metadata = mime_bundle(obj)
        self.items.append(
            {
                "output_type": "execute_result",
                "execution_count": execution_count,
                "data": data,
                "metadata": metadata,
            }
        )

    def clear(self) -> None:
        """``clear_output()``: what the cell showed so far goes."""
        self.items.clear()
        self.chars = {"stdout": 0, "stderr": 0}


class Tee:
    """A text stream that writes through to the real one (the run log) and into the cell."""

    def __init__(self, name: str, real: Any, outputs: CellOutputs) -> None:
        self.name, self.real, self.outputs = name, real, outputs

    def write(self, text: str) -> int:
        self.real.write(text)
        self.outputs.stream(self.name, text)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...
        return getattr(self.real, name)


class Executor:
    """Runs cells one after another in one ``__main__`` namespace, as a kernel would."""

    def __init__(self) -> None:
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        # Pickling classes defined in cells resolves them through sys.modules["__main__"].
        sys.modules["__main__"] = main
        self.ns = main.__dict__
        self.outputs = CellOutputs()
        self.displayer = Display(lambda out: self.outputs.items.append(out), self.clear_output)
        magics = Magics(self)
        self.ns.update(
            __parseq_shell__=self.shell,
            __parseq_magic__=magics.line,
            __parseq_cell_magic__=magics.cell,
        )
        if not hasattr(builtins, "display"):
            builtins.display = self.displayer.display  # type: ignore[attr-defined]
        self.count = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sources: dict[str, str] = {}
        self.label = self.filename = ""

    def clear_output(self) -> None:
        self.outputs.clear()

    def shell(self, command: str) -> None:
        """``!command``: run it through the shell, its output into the cell (as IPython does,
        a non-zero exit does not raise; it is kept in ``_exit_code``)."""
        import subprocess  # nosec B404  # for the notebook's own !commands

        check_shell_command(command, self.ns)
        sys.stdout.flush()
        # The notebook author's own !command, in the parser's sandbox, as IPython runs it.
        proc = subprocess.run(  # nosec B602  # see above
            command, shell=True, capture_output=True, text=True, check=False
        )
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        self.ns["_exit_code"] = proc.returncode

    def run_cell(self, cell: dict[str, Any], label: str) -> BaseException | None:
        """Execute one code cell, recording its outputs; return the exception it raised.

        ``label`` ("cell 3") names the cell in messages and tracebacks."""
        source = source_of(cell)
        cell["outputs"], cell["execution_count"] = [], None
        if not source.strip():
            return None
        self.count += 1
        cell["execution_count"] = self.count
        self.outputs = outputs = CellOutputs()
        self.label, self.filename = label, f"<{label}>"
        real = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee("stdout", real[0], outputs), Tee("stderr", real[1], outputs)
        error: BaseException | None = None
        try:
            value = self.run_source(source)
            if value is not None and not source.rstrip().endswith(";"):
                self.ns["_"] = value
                outputs.data(value, self.count)
        except BaseException as exc:  # SystemExit(0) too: the caller stops there, no failure
            error = exc
        try:  # figures left open are shown after the value, as the inline backend does
            error = error if isinstance(error, Terminated) else self.flush_figures() or error
        finally:
            sys.stdout.flush()
            sys.stdout, sys.stderr = real
            cell["outputs"] = outputs.items
        if error is not None and not _clean_exit(error):
            cell["outputs"].append(error_output(error, self.sources))
        return error

    def run_source(self, source: str) -> Any:
        """Run source in the namespace as the current cell; the value of its last expression
        (None without one). Magics run their cell's body through this too."""
        body, last = self.compile(source, self.label, self.filename)
        self.execute(body)
        return None if last is None else self.execute(last)

    def flush_figures(self) -> BaseException | None:
        """Figures the cell left open become its image outputs (the inline backend is loaded
        only once a notebook uses matplotlib); return what failed drawing them."""
        inline = sys.modules.get("parseq_inline")
        try:
            if inline is not None:
                inline.flush_figures()
        except Exception as exc:
            return exc
        return None

    def capture(self) -> _Capture:
        """``%%capture``: outputs go to a :class:`Captured`, not to the cell."""
        return _Capture(self)

    def compile(
        self, source: str, label: str, filename: str
    ) -> tuple[types.CodeType, types.CodeType | None]:
        """The cell as a body and, when it ends with an expression, that expression apart."""
        try:
            tree = self.parse(source, filename)
        except SyntaxError:
            source = translate(source, label)  # IPython lines; raises when unsupported
            tree = self.parse(source, filename)
        self.sources[filename] = source
        share_sources(self.sources)
        flags = _ast.PyCF_ALLOW_TOP_LEVEL_AWAIT  # top-level await works as in Jupyter
        last = None
        if tree.body and isinstance(tree.body[-1], _ast.Expr):
            expr = _ast.Expression(tree.body.pop().value)
            last = compile(expr, filename, "eval", flags=flags, dont_inherit=True)
        body = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
        return body, last

    @staticmethod
    def parse(source: str, filename: str) -> _ast.Module:
        # dont_inherit: this file's __future__ imports must not change how cells compile.
        flags = _ast.PyCF_ONLY_AST | _ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        return compile(source, filename, "exec", flags=flags, dont_inherit=True)

    def execute(self, code: types.CodeType) -> Any:
        result = eval(code, self.ns)  # nosec B307  # the notebook's own cells, in its sandbox
        if code.co_flags & CO_COROUTINE:
            if self.loop is None:
                import asyncio

                self.loop = asyncio.new_event_loop()
            result = self.loop.run_until_complete(result)
        return result

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


class _Capture:
    """The context of ``%%capture``: the executor's outputs and streams swapped for new ones
    (the run log still gets the text)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.captured = Captured(executor.displayer.publish_display_data)

    def __enter__(self) -> Captured:
        x = self.executor
        self.saved = x.outputs, sys.stdout, sys.stderr
        x.outputs = outputs = CellOutputs()
        sys.stdout = Tee("stdout", sys.__stdout__, outputs)
        sys.stderr = Tee("stderr", sys.__stderr__, outputs)
        return self.captured

    def __exit__(self, *_exc: Any) -> None:
        x = self.executor
        self.captured.outputs = x.outputs.items
        x.outputs, sys.stdout, sys.stderr = self.saved


def _clean_exit(exc: BaseException) -> bool:
    return isinstance(exc, SystemExit) and exc.code in (None, 0)


def share_sources(sources: dict[str, str]) -> None:
    """Let tracebacks show the cells' lines: put them in linecache once something loaded it
    (traceback, logging). An mtime of None keeps the entries from expiring."""
    linecache = sys.modules.get("linecache")
    if linecache is not None:
        for name, text in sources.items():
            linecache.cache[name] = (len(text), None, text.splitlines(True), name)


def error_output(exc: BaseException, sources: dict[str, str]) -> dict[str, Any]:
    """An nbformat ``error`` output: the traceback from the cell's own frames on."""
    import traceback

    share_sources(sources)

    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(CELL_FILENAME):
        tb = tb.tb_next
    if tb is None or isinstance(exc, (SyntaxError, NotebookError)):
        lines = traceback.format_exception_only(type(exc), exc)
    else:
        lines = traceback.format_exception(type(exc), exc, tb)
    return {
        "output_type": "error",
        "ename": type(exc).__name__,
        "evalue": str(exc),
        "traceback": "".join(lines).rstrip("\n").split("\n"),
    }


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise Terminated("stopped by Parseq (timeout or cancel)")


def main(argv: list[str]) -> int:
    opened = open_run(argv, "nbexec_launcher.py")
    if opened is None:
        return 2
    notebook_path, output_path, run_argv, nb, args = opened
    # The notebook sees what a script would: its own folder first on sys.path (helper modules
    # beside it import; this file's folder, Parseq's package, must not), and the run's argv.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:  # the launcher's folder
        del sys.path[0]
    sys.path.insert(0, os.path.dirname(notebook_path))
    sys.argv = [notebook_path, *run_argv]
    injected = inject_parameters(nb, args)
    signals.signal(signals.SIGTERM, _on_sigterm)
    started = time.monotonic()
    failed = None
    executor = Executor()
    install_hooks(executor.displayer)  # matplotlib's inline backend, IPython's display()
    try:
        failed = run_all(nb, injected, executor)
    except Terminated as exc:  # between two cells
        failed = (None, exc)
    finally:
        nb.setdefault("metadata", {})["parseq"] = {
            "run_id": os.environ.get("PARSEQ_RUN_ID"),
            "parser": os.environ.get("PARSEQ_PARSER"),
            "args": args,
            "status": "error" if failed else "completed",
            "failed_cell": failed[0] if failed else None,
            "duration_s": round(time.monotonic() - started, 3),
        }
        save(nb, output_path)
    if failed and isinstance(failed[1], Terminated):
        return 128 + signals.SIGTERM
    return 1 if failed else 0


def run_all(
    nb: dict[str, Any], injected: int | None, executor: Executor
) -> tuple[int | None, BaseException] | None:
    """Run the code cells in order until one fails (returned with its position in the source
    notebook, None for the injected cell) or ``sys.exit(0)`` stops the notebook."""
    position, stop = 0, False
    failed: tuple[int | None, BaseException] | None = None
    try:
        for index, cell in enumerate(nb["cells"]):
            if index != injected:
                position += 1  # 1-based, counting every cell of the notebook as authored
            if cell.get("cell_type") != "code":
                continue
            if stop:
                cell["outputs"], cell["execution_count"] = [], None
                continue
            label = "cell injected-parameters" if index == injected else f"cell {position}"
            error = executor.run_cell(cell, label)
            if error is None:
                continue
            stop = True
            if _clean_exit(error):
                continue
            sys.stderr.write("\n".join(cell["outputs"][-1]["traceback"]) + "\n")
            if isinstance(error, NotebookError):  # says what to do; name the cell once
                summary = str(error) if str(error).startswith(label) else f"{label}: {error}"
            else:
                count = cell["execution_count"]
                summary = f"{label} failed (In [{count}]): {type(error).__name__}: {error}"
            print(f"parseq: {summary}", file=sys.stderr)
            failed = (None if index == injected else position, error)
        return failed
    finally:
        executor.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
