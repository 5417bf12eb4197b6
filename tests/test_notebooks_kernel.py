"""The kernel engine (``engine: kernel``): a real ipykernel driven by nbclient in the parser's
env, with the fast engine's args, files, errors, timeout and cancel. Each ``output.ipynb`` is
validated with nbformat by ``run_notebook``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from flask import Flask
from nbformat.v4 import new_code_cell, new_markdown_cell

from parseq.db.models import NotebookEngine, ParserKind, Run, RunStatus, db
from parseq.services import registry, runs
from tests.conftest import api_client, wait_for_status
from tests.test_notebooks import PARAMS, add_notebook, result, run_notebook, stream

KERNEL = {"engine": NotebookEngine.KERNEL}


def test_kernel_packages_join_the_requirements_of_kernel_notebooks_only(
    make_config: Any, tmp_path: Path
) -> None:
    from parseq.db.models import Parser

    config = make_config()
    script = tmp_path / "nb.ipynb"
    script.write_text("{}")
    kernel = Parser(kind=ParserKind.NOTEBOOK, engine=NotebookEngine.KERNEL, requirements="six")
    assert registry.requirements_for(config, kernel, script).lines == (
        "ipykernel",
        "nbclient",
        "six",
    )
    pinned = Parser(
        kind=ParserKind.NOTEBOOK, engine=NotebookEngine.KERNEL, requirements="ipykernel==6.29.5"
    )
    assert registry.requirements_for(config, pinned, script).lines == (
        "ipykernel==6.29.5",
        "nbclient",
    )
    fast = Parser(kind=ParserKind.NOTEBOOK, engine=NotebookEngine.FAST, requirements="six")
    assert registry.requirements_for(config, fast, script).lines == ("six",)


def test_kernel_engine_runs_what_the_fast_engine_refuses(embedded_app: Flask) -> None:
    parser = add_notebook(
        embedded_app,
        "kernel",
        [
            new_markdown_cell("# Kernel"),
            new_code_cell("n = 1\nwho = 'default'", metadata=PARAMS),
            new_code_cell("len?"),
            new_code_cell("print('hello', who)\nget_ipython().user_ns['n'] * 2"),
            new_code_cell(
                "import os, pathlib, sys\n"
                "out = pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'])\n"
                "(out / 'output.txt').write_text(os.environ['PARSEQ_ARGS'])\n"
                "%who_ls int"
            ),
            new_code_cell("from IPython.display import HTML, display\ndisplay(HTML('<b>b</b>'))"),
        ],
        **KERNEL,
    )
    run, nb = run_notebook(parser, {"n": 21, "max-pages": 2})
    assert run.status is RunStatus.COMPLETED, run.error
    _md, _params, injected, help_cell, hello, files, html = nb.cells
    assert injected.metadata.tags == ["injected-parameters"]
    assert help_cell.execution_count is not None  # IPython's help: no SyntaxError here
    assert stream(hello) == "hello default\n" and result(hello) == "42"
    assert result(files) == "['n']"
    assert html.outputs[0]["data"]["text/html"] == "<b>b</b>"
    assert nb.metadata.parseq["engine"] == "kernel"
    assert nb.metadata.parseq["status"] == "completed"
    out = api_client(embedded_app).get(f"/api/v1/runs/{run.id}/files/output.txt").data
    assert json.loads(out) == {"n": 21, "max-pages": 2}
    assert [f.name for f in run.files] == ["output.ipynb", "output.txt", "run.log"]
    log = api_client(embedded_app).get(f"/api/v1/runs/{run.id}/files/run.log").data.decode()
    assert "hello default" in log


def test_kernel_engine_failures_name_the_cell_and_pip_stays_refused(embedded_app: Flask) -> None:
    parser = add_notebook(
        embedded_app,
        "kernel-fails",
        [new_code_cell("x = 1"), new_code_cell("1 / 0"), new_code_cell("print('never')")],
        **KERNEL,
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.ERROR and run.exit_code == 1
    last = run.error.splitlines()[-1]
    assert last == "parseq: cell 2 failed (In [2]): ZeroDivisionError: division by zero"
    assert nb.cells[1].outputs[-1]["ename"] == "ZeroDivisionError"
    assert nb.cells[2].execution_count is None
    assert nb.metadata.parseq["failed_cell"] == 2

    pip = add_notebook(
        embedded_app, "kernel-pip", [new_code_cell("x = 1"), new_code_cell("%pip install six")]
    )
    pip.engine = NotebookEngine.KERNEL
    db.session.commit()
    run, nb = run_notebook(pip)
    assert run.status is RunStatus.ERROR
    assert run.error.splitlines()[-1].startswith(
        "parseq: cell 2: '%pip install six' is not run by Parseq"
    )
    assert nb.cells[0].execution_count is None  # refused before the kernel starts


def _kernel_pid(app: Flask, run_id: int, timeout_s: float = 60.0) -> int:
    """The kernel's pid, written by the notebook's first cell into its output folder."""
    workdir = app.extensions["parseq"].config.runs_dir / str(run_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = list(workdir.glob("**/kernel.pid"))
        if found and found[0].read_text().strip():
            return int(found[0].read_text())
        time.sleep(0.2)
    raise AssertionError("the kernel never started")


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


SLOW = [
    new_code_cell(
        "import os, pathlib\n"
        "pid = pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR']) / 'kernel.pid'\n"
        "pid.write_text(str(os.getpid()))\nprint('started')"
    ),
    new_code_cell("import time\ntime.sleep(60)"),
    new_code_cell("3"),
]


@pytest.mark.parametrize("stop", ["timeout", "cancel"])
def test_timeout_and_cancel_kill_the_kernel(embedded_app: Flask, stop: str) -> None:
    timeout_s = 20.0 if stop == "timeout" else None
    parser = add_notebook(embedded_app, f"kernel-{stop}", SLOW, timeout_s=timeout_s, **KERNEL)
    run = runs.create_run(parser)
    pid = _kernel_pid(embedded_app, run.id)
    assert psutil.pid_exists(pid) and pid != os.getpid()
    if stop == "cancel":
        runs.cancel_run(db.session.get(Run, run.id))
        final = wait_for_status(run.id, RunStatus.CANCELLED, timeout_s=30)
    else:
        final = wait_for_status(run.id, RunStatus.TIMEOUT, timeout_s=60)
    assert _gone(pid), "the kernel outlived the run"
    deadline = time.monotonic() + 30  # a cancelled run is final first, its files come after
    while final.file("output.ipynb") is None and time.monotonic() < deadline:
        time.sleep(0.2)
        db.session.expire_all()
        final = db.session.get(Run, final.id)
    resp = api_client(embedded_app).get(f"/api/v1/runs/{final.id}/files/output.ipynb")
    assert resp.status_code == 200, (final.error, [f.name for f in final.files])
    nb = nbformat.reads(resp.data.decode(), as_version=4)
    nbformat.validate(nb)
    assert stream(nb.cells[0]) == "started\n"
    assert nb.cells[1].outputs[-1]["ename"] == "Terminated"
    assert nb.cells[2].execution_count is None
