"""The kernel engine: run a notebook with a real Jupyter kernel (``engine: kernel``).

Run by the parser's own interpreter, through ``nbkernel_launcher.py``, exactly as the fast
engine (:mod:`parseq.notebooks.nbexec`) is: same arguments, same injected parameters cell, same
``output.ipynb`` metadata, same exit statuses and last stderr line naming the failed cell.
nbclient (papermill's engine) starts an ipykernel from the parser's virtualenv, where Parseq
adds both to the requirements. The kernel inherits the run's environment and working folder.

jupyter_client starts the kernel in a session of its own, out of reach of the signal Parseq
sends the run's process group at timeout or cancel, so SIGTERM here kills the kernel's group
before the notebook is saved.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import time
from typing import Any

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

try:  # imported as parseq.notebooks.nbkernel (Parseq itself, tests)
    from parseq.notebooks.nbdoc import inject_parameters, open_run, save, source_of
    from parseq.notebooks.nbsyntax import PIP_INSTALL_RE, NotebookError
except ImportError:  # run through nbkernel_launcher.py, which has this folder on sys.path
    from nbdoc import inject_parameters, open_run, save, source_of  # type: ignore[no-redef]
    from nbsyntax import PIP_INSTALL_RE, NotebookError  # type: ignore[no-redef]

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Terminated(Exception):
    """SIGTERM arrived (timeout or cancel): the kernel is killed, what ran is saved."""


class KernelRun:
    """One notebook through nbclient: which cell runs, its outputs echoed to the run log."""

    def __init__(self, nb: Any, labels: dict[int, str]) -> None:
        self.labels = labels
        self.current: int | None = None
        # IPC, not TCP: no port to race other processes for (a busy host lost such races),
        # no plain-text traffic; the sockets are files in the run's working folder.
        km = KernelManager(kernel_name="python3", transport="ipc", ip=".parseq-kernel")
        self.client = NotebookClient(
            nb,
            km=km,
            timeout=None,  # Parseq's own timeout stops the run
            kernel_name="python3",
            resources={"metadata": {"path": os.getcwd()}},
            on_cell_start=self.on_cell_start,
            on_cell_executed=self.on_cell_executed,
        )

    def on_cell_start(self, cell: Any, cell_index: int) -> None:
        self.current = cell_index

    def on_cell_executed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        """The run log gets what the cell printed and showed, as with the fast engine."""
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                stream = sys.stdout if output.get("name") == "stdout" else sys.stderr
                stream.write(output.get("text", ""))
            elif "data" in output and "text/plain" in output["data"]:
                print(output["data"]["text/plain"])
        sys.stdout.flush()

    def kill_kernel(self) -> None:
        """SIGKILL the kernel's process group (it has a session of its own)."""
        provisioner = getattr(self.client.km, "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
                os.killpg(getattr(provisioner, "pgid", None) or pid, signal.SIGKILL)

    def execute(self) -> tuple[int | None, BaseException] | None:
        """Run every cell; the failed one (its index) and the error, or None."""
        try:
            self.client.execute()
        except CellExecutionError as exc:
            return self.current, exc
        except Exception as exc:  # DeadKernelError, a kernel that does not start...
            self.kill_kernel()
            if self.current is not None:
                cell = self.client.nb.cells[self.current]
                cell.setdefault("outputs", []).append(
                    nbformat.v4.new_output(
                        "error", ename=type(exc).__name__, evalue=str(exc), traceback=[str(exc)]
                    )
                )
            return self.current, exc
        return None


def refuse_pip(nb: dict[str, Any], labels: dict[int, str]) -> None:
    """``%pip install`` and friends stay refused: requirements are declared, not installed by
    the notebook at run time."""
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        for line in source_of(cell).split("\n"):
            if re.match(PIP_INSTALL_RE, line):
                raise NotebookError(
                    f"{labels[index]}: {line.strip()!r} is not run by Parseq: list the packages "
                    "in the parser's requirements instead (they are installed into its "
                    "virtualenv before the run) and remove this line"
                )


def cell_labels(nb: dict[str, Any], injected: int | None) -> dict[int, str]:
    """``cell 3`` by index, counting every cell as authored (the injected one apart)."""
    labels, position = {}, 0
    for index in range(len(nb["cells"])):
        if index == injected:
            labels[index] = "cell injected-parameters"
            continue
        position += 1
        labels[index] = f"cell {position}"
    return labels


def summary(label: str, cell: Any, error: BaseException) -> str:
    if isinstance(error, CellExecutionError):
        count = cell.get("execution_count")
        return f"{label} failed (In [{count}]): {error.ename}: {error.evalue}"
    return f"{label}: {type(error).__name__}: {error}"


def main(argv: list[str]) -> int:
    opened = open_run(argv, "nbkernel_launcher.py")
    if opened is None:
        return 2
    notebook_path, output_path, _run_argv, raw, args = opened
    injected = inject_parameters(raw, args)
    labels = cell_labels(raw, injected)
    # Helper modules beside the notebook import, as with the fast engine.
    paths = [os.path.dirname(notebook_path), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    for cell in raw["cells"]:
        cell["source"] = source_of(cell)  # nbclient wants it joined, as nbformat.read does
        if cell.get("cell_type") == "code":  # outputs saved from Jupyter must not survive
            cell["outputs"], cell["execution_count"] = [], None
    nb = nbformat.from_dict(raw)
    run = KernelRun(nb, labels)
    finish = Finish(nb, output_path, labels, injected, args)
    watch_sigterm(run, finish)
    try:
        refuse_pip(raw, labels)
        failed = run.execute()
    except NotebookError as exc:
        failed = (None, exc)
    return finish(run, failed)


class Finish:
    """Save ``output.ipynb`` and say how the run ended: once, from the main thread when the
    notebook ends, or from the SIGTERM watcher when Parseq stops it."""

    def __init__(
        self,
        nb: Any,
        output_path: str,
        labels: dict[int, str],
        injected: int | None,
        args: dict[str, Any],
    ) -> None:
        self.nb, self.output_path, self.labels = nb, output_path, labels
        self.injected, self.args = injected, args
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, run: KernelRun, failed: tuple[int | None, BaseException] | None) -> int:
        with self.lock:  # held until the process ends: the other caller waits forever
            run.kill_kernel()  # none outlives the run, whatever nbclient did
            self.save(failed)
            if failed is None:
                return 0
            self.report(*failed)
            return 128 + signal.SIGTERM if isinstance(failed[1], Terminated) else 1

    def save(self, failed: tuple[int | None, BaseException] | None) -> None:
        index = failed[0] if failed else None
        label = self.labels.get(index, "") if index is not None else ""
        self.nb.metadata["parseq"] = {
            "run_id": os.environ.get("PARSEQ_RUN_ID"),
            "parser": os.environ.get("PARSEQ_PARSER"),
            "args": self.args,
            "engine": "kernel",
            "status": "error" if failed else "completed",
            "failed_cell": int(label[5:]) if label[5:].isdigit() else None,
            "duration_s": round(time.monotonic() - self.started, 3),
        }
        save(self.nb, self.output_path)

    def report(self, index: int | None, error: BaseException) -> None:
        if isinstance(error, CellExecutionError):
            print(ANSI_RE.sub("", str(error)).rstrip(), file=sys.stderr)
        if isinstance(error, NotebookError):
            print(f"parseq: {error}", file=sys.stderr)
            return
        label = self.labels[index] if index is not None else "notebook"
        cell = self.nb.cells[index] if index is not None else {}
        print(f"parseq: {summary(label, cell, error)}", file=sys.stderr)


def watch_sigterm(run: KernelRun, finish: Finish) -> None:
    """Stop on SIGTERM (timeout, cancel) at once: kill the kernel, save, exit 143.

    A Python signal handler runs only when the main thread runs Python, and nbclient's main
    thread waits in poll() for the kernel while the signal may go to one of zmq's threads:
    a silent cell would hold the handler back until Parseq's SIGKILL, with nothing saved. So
    SIGTERM is blocked in every thread (those started later inherit that) and one thread waits
    for it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        signal.sigwait({signal.SIGTERM})
        run.kill_kernel()
        index = run.current
        error = Terminated("stopped by Parseq (timeout or cancel)")
        if index is not None:
            run.client.nb.cells[index].setdefault("outputs", []).append(
                nbformat.v4.new_output(
                    "error", ename="Terminated", evalue=str(error), traceback=[str(error)]
                )
            )
        sys.stdout.flush()
        os._exit(finish(run, (index, error)))

    threading.Thread(target=wait, name="parseq-sigterm", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
