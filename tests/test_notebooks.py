"""Notebook parsers: validation at save, the kernel-free executor, and real runs end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from flask import Flask, current_app
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from parseq.core.config import PROJECT_ROOT, Config
from parseq.core.errors import ValidationError
from parseq.db.models import Parser, ParserKind, Run, RunStatus, db
from parseq.notebooks import nbdoc, nbsyntax
from parseq.notebooks import validate as notebooks
from parseq.services import runs
from parseq.services.registry import sync_shipped
from tests.conftest import add_parser, admin_client, api_client, wait_for_run

PARAMS = {"tags": ["parameters"]}
STALE = new_output("stream", name="stdout", text="from an earlier Jupyter session\n")


def write_nb(root: Path, name: str, cells: list[Any], minor: int = 5) -> str:
    """Write a notebook under ``root`` and return its path relative to it."""
    nb = new_notebook(cells=cells)
    if minor < 5:
        nb.nbformat_minor = minor
        for cell in nb.cells:
            cell.pop("id", None)
    root.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, root / f"{name}.ipynb")
    return f"{name}.ipynb"


def add_notebook(app: Flask, name: str, cells: list[Any], minor: int = 5, **fields: Any) -> Parser:
    root = app.extensions["parseq"].config.notebooks_dir
    rel = write_nb(root, name, cells, minor)
    return add_parser(name, rel, kind=ParserKind.NOTEBOOK, **fields)


def run_notebook(parser: Parser, args: dict[str, Any] | None = None) -> tuple[Run, Any]:
    """Run through the broker and worker; return the run and its ``output.ipynb`` (validated)
    as the API serves it."""
    run = wait_for_run(runs.create_run(parser, args).id)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    resp = api_client(app).get(f"/api/v1/runs/{run.id}/files/output.ipynb")
    assert resp.status_code == 200, (run.status, run.error, resp.json)
    assert resp.headers["Content-Type"] == "application/x-ipynb+json"
    nb = nbformat.reads(resp.data.decode(), as_version=4)
    nbformat.validate(nb)
    return run, nb


def outputs(cell: Any) -> list[dict[str, Any]]:
    return [dict(o) for o in cell.outputs]


def stream(cell: Any, name: str = "stdout") -> str:
    return "".join(o["text"] for o in cell.outputs if o.get("name") == name)


def result(cell: Any) -> str | None:
    found = [o for o in cell.outputs if o["output_type"] == "execute_result"]
    return found[0]["data"]["text/plain"] if found else None


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "tail"),
    [
        ({}, []),
        (
            {"digits": 5, "who": "x y", "dry-run": True},
            ["--digits", "5", "--who", "x y", "--dry-run"],
        ),
    ],
)
def test_build_command_runs_the_executor_on_the_notebook_then_the_args(
    args: dict[str, Any], tail: list[str]
) -> None:
    argv = notebooks.build_command("/env/bin/python", "/nb/a.ipynb", "/out/output.ipynb", args)
    assert argv[:4] == [
        "/env/bin/python",
        str(notebooks.EXECUTOR),
        "/nb/a.ipynb",
        "/out/output.ipynb",
    ]
    assert argv[4:] == tail
    assert Path(argv[1]).is_file() and argv[1].endswith("nbexec_launcher.py")


def _cells(*tagged: bool) -> dict[str, Any]:
    cells = [
        {"cell_type": "code", "source": f"c{i}", "metadata": {"tags": ["parameters"]} if t else {}}
        for i, t in enumerate(tagged)
    ]
    return {"nbformat": 4, "nbformat_minor": 4, "cells": cells}


@pytest.mark.parametrize(
    ("tagged", "index"), [((False, True, False), 2), ((False, False), 0), ((True,), 1)]
)
def test_parameters_are_injected_after_the_tagged_cell_or_at_the_top(
    tagged: tuple[bool, ...], index: int
) -> None:
    nb = _cells(*tagged)
    assert nbdoc.inject_parameters(nb, {"n": 3}) == index
    cell = nb["cells"][index]
    assert cell["metadata"]["tags"] == ["injected-parameters"]
    assert cell["source"].endswith("n = 3\n")
    assert "id" not in cell  # nbformat 4.4 has no cell ids
    assert len(nb["cells"]) == len(tagged) + 1


def test_an_earlier_injected_cell_is_replaced_not_stacked() -> None:
    nb = _cells(True, False)
    nbdoc.inject_parameters(nb, {"n": 1})
    nb["nbformat_minor"] = 5
    nbdoc.inject_parameters(nb, {"n": 2})
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "n = 2" in injected[0]["source"] and injected[0]["id"]


def test_no_arguments_inject_no_cell_and_drop_an_earlier_one() -> None:
    nb = _cells(True, False)
    nbdoc.inject_parameters(nb, {"n": 1})
    assert nbdoc.inject_parameters(nb, {}) is None
    assert [c["source"] for c in nb["cells"]] == ["c0", "c1"]  # counts stay as authored


def test_parameters_source_is_python_for_any_json_and_skips_non_identifiers() -> None:
    source = nbdoc.parameters_source(
        {"s": "it's", "n": None, "b": False, "x": [1.5, {"k": float("inf")}], "max-pages": 2}
    )
    assert "max-pages" not in source
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    assert (namespace["s"], namespace["n"], namespace["b"]) == ("it's", None, False)
    assert namespace["x"] == [1.5, {"k": float("inf")}]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("!echo hi", "__parseq_shell__('echo hi')"),
        ("if True:\n    !ls -l", "if True:\n    __parseq_shell__('ls -l')"),
        ("%matplotlib inline\nx = 1", "pass  # %matplotlib inline\nx = 1"),
        ("%env MODE=fast", "__parseq_magic__('env', 'MODE=fast')"),
        ("  %time f(x)", "  __parseq_magic__('time', 'f(x)')"),
        (
            "%%capture out\nprint(1)\n!ls",
            "__parseq_cell_magic__('capture', 'out', 'print(1)\\n!ls')",
        ),
    ],
)
def test_simple_ipython_lines_become_python(source: str, expected: str) -> None:
    assert nbsyntax.translate(source, "cell 2") == expected


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("!pip install requests", "requirements"),
        ("%pip install -q bs4", "requirements"),
        ("!python3 -m pip install lxml", "requirements"),
        ("%conda install numpy", "requirements"),
        ("pip install requests", "requirements"),
        ("  conda install -y numpy", "requirements"),
        ("%prun sum(range(9))", "magic %prun is not supported by the fast engine"),
        ("%%bash\necho hi", "cell magic %%bash is not supported by the fast engine"),
        ("len?", "IPython help (obj?) is not supported"),
        ("df.head??", "IPython help (obj?) is not supported"),
        ("files = !ls", "capturing"),
        ("!echo {x}", "no {variable} expansion"),
    ],
)
def test_unsupported_ipython_lines_are_refused_naming_the_cell(source: str, says: str) -> None:
    with pytest.raises(nbsyntax.NotebookError) as err:
        nbsyntax.translate(source, "cell 4")
    assert str(err.value).startswith("cell 4: ")
    assert says in str(err.value)


# --- validation at save ---------------------------------------------------------------------


def test_a_valid_notebook_passes_and_gives_a_description(tmp_path: Path) -> None:
    rel = write_nb(
        tmp_path, "ok", [new_markdown_cell("# Title\n\nWhat it does.\n\nMore."), new_code_cell("1")]
    )
    nb = notebooks.validate_notebook(tmp_path / rel)
    assert notebooks.describe(nb) == "What it does."


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"cells": [', "is not valid JSON"),
        ("[1, 2]", "no JSON object"),
        ('{"nbformat": 3, "nbformat_minor": 0, "worksheets": [], "metadata": {}}', "nbformat 3"),
        (
            json.dumps(
                {
                    "nbformat": 4,
                    "nbformat_minor": 4,
                    "metadata": {},
                    "cells": [{"cell_type": "code", "source": 5}],
                }
            ),
            "does not match the nbformat 4 schema at cells/0",
        ),
        (
            nbformat.writes(new_notebook(metadata={"language_info": {"name": "R"}})),
            "is written in R; Parseq runs Python notebooks",
        ),
    ],
)
def test_invalid_notebooks_are_refused_with_a_clear_message(
    tmp_path: Path, content: str, says: str
) -> None:
    (tmp_path / "bad.ipynb").write_text(content)
    with pytest.raises(ValidationError) as err:
        notebooks.validate_notebook(tmp_path / "bad.ipynb", shown_as="notebooks/bad.ipynb")
    assert err.value.field == "path"
    assert err.value.message.startswith("notebook notebooks/bad.ipynb ")
    assert says in err.value.message


def test_admin_refuses_to_save_an_invalid_notebook_parser(sqlite_app: Flask) -> None:
    root = sqlite_app.extensions["parseq"].config.notebooks_dir
    root.mkdir(parents=True, exist_ok=True)
    (root / "broken.ipynb").write_text('{"cells": [}')
    good = write_nb(root, "good", [new_code_cell("print(1)")])
    client = admin_client(sqlite_app)
    form = {
        "default_args": "{}",
        "max_retries": "0",
        "enabled": "y",
        "csrf_token": client.csrf_token,
    }

    resp = client.post(
        "/admin/parsers/new/",
        data={**form, "name": "broken", "script": "notebook:broken.ipynb"},
    )
    assert resp.status_code == 200
    assert "notebook notebooks/broken.ipynb is not valid JSON" in resp.get_data(as_text=True)
    resp = client.post(
        "/admin/parsers/new/", data={**form, "name": "ghost", "script": "notebook:ghost.ipynb"}
    )
    assert resp.status_code == 200  # not among the files under notebooks/
    assert db.session.execute(db.select(Parser)).scalars().all() == []

    resp = client.post(
        "/admin/parsers/new/", data={**form, "name": "good", "script": f"notebook:{good}"}
    )
    assert resp.status_code == 302
    saved = db.session.execute(db.select(Parser)).scalar_one()
    assert (saved.name, saved.kind, saved.path) == ("good", ParserKind.NOTEBOOK, "good.ipynb")


def test_shipped_notebooks_are_registered_and_broken_ones_skipped(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    from parseq.web.app import create_app, init_db

    app = create_app(make_config())
    init_db(app)
    root = app.extensions["parseq"].config.notebooks_dir
    write_nb(root, "rates", [new_markdown_cell("# Rates\n\nDaily rates."), new_code_cell("1")])
    write_nb(root, "echo_env", [new_code_cell("1")])  # a fixture script has this name
    (root / "broken.ipynb").write_text("{")
    with app.app_context():
        added = {p.name: p for p in sync_shipped(app.extensions["parseq"].config)}
        rates = added["rates"]
        assert (rates.kind, rates.path, rates.description) == (
            ParserKind.NOTEBOOK,
            "rates.ipynb",
            "Daily rates.",
        )
        assert added["echo_env"].kind is ParserKind.SCRIPT
        assert "broken" not in added
        db.engine.dispose()


# --- real runs (embedded: SQLite, in-memory broker, worker threads) -------------------------


def test_run_args_are_injected_and_every_output_is_recorded(embedded_app: Flask) -> None:
    parser = add_notebook(
        embedded_app,
        "nb",
        [
            new_markdown_cell("# A notebook"),
            new_code_cell("n = 1\nwho = 'default'", metadata=PARAMS),
            new_code_cell(
                "import sys\nprint('hello', who)\nprint('to stderr', file=sys.stderr)\nn * 2"
            ),
            new_code_cell(
                "import json, os, pathlib\n"
                "args = json.loads(os.environ['PARSEQ_ARGS'])\n"
                "out = pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'])\n"
                "line = f\"{who} {args['max-pages']} {sys.argv[1:]}\\n\"\n"
                "(out / 'output.txt').write_text(line)\n"
                "(out / 'path.json').write_text(json.dumps(sys.path))\n"
                "x = 5;"
            ),
            new_code_cell(
                "!echo from the shell\n%env MODE=fast\ndisplay(os.environ['MODE'])\n"
                "import asyncio\nawait asyncio.sleep(0)\n{'a': [1, 2]}"
            ),
            new_code_cell(""),
        ],
        default_args={"who": "parser-default"},
    )
    run, nb = run_notebook(parser, {"n": 21, "max-pages": 2})
    assert run.status is RunStatus.COMPLETED, run.error
    assert [f.name for f in run.files] == ["output.ipynb", "output.txt", "path.json", "run.log"]

    md, params, injected, hello, files, shell, empty = nb.cells
    assert injected.metadata.tags == ["injected-parameters"]
    assert injected.source.splitlines()[1:] == ["who = 'parser-default'", "n = 21"]
    assert [c.execution_count for c in (params, injected, hello, files, shell)] == [1, 2, 3, 4, 5]
    assert empty.execution_count is None and md.cell_type == "markdown"
    assert stream(hello) == "hello parser-default\n"
    assert stream(hello, "stderr") == "to stderr\n"
    assert result(hello) == "42"
    assert [o["output_type"] for o in hello.outputs] == ["stream", "stream", "execute_result"]
    assert files.outputs == []  # a trailing ; hides the value, as in Jupyter
    assert stream(shell) == "from the shell\nenv: MODE=fast\n"  # as IPython prints it
    assert shell.outputs[1]["output_type"] == "display_data"
    assert shell.outputs[1]["data"] == {"text/plain": "'fast'"}
    assert result(shell) == "{'a': [1, 2]}"
    assert nb.metadata.parseq["status"] == "completed"
    assert nb.metadata.parseq["run_id"] == str(run.id)

    client = api_client(embedded_app)
    out = client.get(f"/api/v1/runs/{run.id}/files/output.txt").data.decode()
    assert out == "parser-default 2 ['--who', 'parser-default', '-n', '21', '--max-pages', '2']\n"
    log = client.get(f"/api/v1/runs/{run.id}/files/run.log").data.decode()
    assert "hello parser-default" in log and "to stderr" in log
    sys_path = json.loads(client.get(f"/api/v1/runs/{run.id}/files/path.json").data)
    assert sys_path[0] == str(embedded_app.extensions["parseq"].config.notebooks_dir)
    assert str(Path(notebooks.__file__).parent) not in sys_path  # Parseq's own modules


def test_a_failing_cell_fails_the_run_and_later_cells_stay_unexecuted(
    embedded_app: Flask,
) -> None:
    parser = add_notebook(
        embedded_app,
        "broken",
        [
            new_code_cell("print('first')"),
            new_markdown_cell("the next cell fails"),
            new_code_cell("def parse(rows):\n    return rows / 0\n\nparse(3)"),
            # saved from Jupyter with outputs: they must not survive into output.ipynb
            new_code_cell("print('never')", execution_count=7, outputs=[STALE]),
        ],
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.ERROR
    assert run.exit_code == 1
    last_line = run.error.splitlines()[-1]
    assert last_line == "parseq: cell 3 failed (In [2]): ZeroDivisionError: division by zero"

    first, _md, failing, later = nb.cells  # no arguments: no injected cell
    assert stream(first) == "first\n"
    error = failing.outputs[-1]
    assert (error["output_type"], error["ename"], error["evalue"]) == (
        "error",
        "ZeroDivisionError",
        "division by zero",
    )
    tb = "\n".join(error["traceback"])
    assert 'File "<cell 3>", line 4, in <module>' in tb
    assert "return rows / 0" in tb and "nbexec" not in tb
    assert (later.execution_count, later.outputs) == (None, [])
    assert nb.metadata.parseq == {**nb.metadata.parseq, "status": "error", "failed_cell": 3}


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("!pip install requests", "cell 2: '!pip install requests' is not run by Parseq"),
        ("!echo $x", "cell 2: !echo $x: $x names a Python variable"),
        ("%prun x", "cell 2: magic %prun is not supported by the fast engine"),
        ("pip install requests", "cell 2: 'pip install requests' is not run by Parseq"),
    ],
)
def test_unsupported_ipython_lines_fail_the_run_naming_the_cell(
    embedded_app: Flask, line: str, says: str
) -> None:
    parser = add_notebook(
        embedded_app, "ipy", [new_code_cell("x = 1"), new_code_cell(line), new_code_cell("2")]
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.ERROR
    assert run.error.splitlines()[-1].startswith(f"parseq: {says}")
    if "pip" in line:
        assert "parser's requirements" in run.error
    assert nb.cells[1].outputs[-1]["ename"] == "NotebookError"
    assert nb.cells[2].execution_count is None


def test_sys_exit_zero_stops_the_notebook_without_failing_it(embedded_app: Flask) -> None:
    parser = add_notebook(
        embedded_app,
        "early",
        [new_code_cell("import sys\nprint('nothing new')\nsys.exit(0)"), new_code_cell("1/0")],
        minor=4,
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.COMPLETED, run.error
    assert stream(nb.cells[0]) == "nothing new\n"
    assert nb.cells[1].execution_count is None
    assert "id" not in nb.cells[0]  # an nbformat 4.4 notebook stays valid 4.4


def test_timeout_keeps_the_cells_that_ran_and_marks_the_stopped_one(
    embedded_app: Flask,
) -> None:
    parser = add_notebook(
        embedded_app,
        "slow",
        [
            new_code_cell("print('started')"),
            new_code_cell("import time\ntime.sleep(30)"),
            new_code_cell("3"),
        ],
        timeout_s=1.0,
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.TIMEOUT
    assert stream(nb.cells[0]) == "started\n"
    assert nb.cells[1].outputs[-1]["ename"] == "Terminated"
    assert nb.cells[2].execution_count is None


def test_the_sdk_works_in_a_notebook_as_in_a_script(embedded_app: Flask) -> None:
    parser = add_notebook(
        embedded_app,
        "sdk",
        [
            new_code_cell("pages = 1", metadata=PARAMS),
            new_code_cell(
                "from parseq_sdk import context, output, output_json, progress\n"
                "for page in range(1, pages + 1):\n"
                "    output(f'page {page}')\n"
                "    progress(page, pages, f'page {page}')\n"
                "output_json({'max': context.args['max-pages'], 'run': context.run_id})"
            ),
        ],
    )
    run, _nb = run_notebook(parser, {"pages": 2, "max-pages": 5})
    assert run.status is RunStatus.COMPLETED, run.error
    out = api_client(embedded_app).get(f"/api/v1/runs/{run.id}/files/output.txt").data.decode()
    lines = out.splitlines()
    assert lines[:2] == ["page 1", "page 2"]
    assert json.loads(lines[2]) == {"max": 5, "run": run.id}
    assert (run.progress_done, run.progress_total) == (2, 2)


def test_notebook_runs_in_its_own_virtualenv_with_its_requirements(embedded_app: Flask) -> None:
    # Parseq's own venv has six 1.17.0: 1.16.0 proves the notebook ran in its env.
    parser = add_notebook(
        embedded_app,
        "six",
        [
            new_code_cell('# /// script\n# dependencies = ["six==1.16.0"]\n# ///\nimport sys'),
            new_code_cell("import six\nsix.__version__, sys.prefix"),
        ],
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.COMPLETED, run.error
    version, prefix = eval(result(nb.cells[1]))  # a tuple of two strings
    assert version == "1.16.0"
    assert run.env_key and Path(prefix).name == run.env_key


def test_demo_notebook_is_registered_and_runs(make_config: Callable[..., Config]) -> None:
    from parseq.web.app import create_app, init_db
    from parseq.worker.actors import start_worker

    app = create_app(make_config(notebooks_dir=PROJECT_ROOT / "notebooks"))
    init_db(app)
    worker = start_worker(app, threads=1)
    try:
        with app.app_context():
            sync_shipped(app.extensions["parseq"].config)
            parser = runs.get_parser("pi-notebook")
            assert parser.kind is ParserKind.NOTEBOOK
            assert parser.description.startswith("Computes pi to `digits` decimals")
            run, nb = run_notebook(parser, {"digits": 20})
            assert run.status is RunStatus.COMPLETED, run.error
            client = api_client(app)
            out = client.get(f"/api/v1/runs/{run.id}/files/output.txt").data
            assert out == b"3.14159265358979323846\n"
            assert [f.name for f in run.files] == [
                "output.ipynb",
                "output.txt",
                "pi.json",
                "run.log",
            ]
            assert "'3.14159265358979323846'" in [result(c) for c in nb.cells[1:] if "outputs" in c]

            page = admin_client(app).get(f"/admin/runs/details/?id={run.id}")
            assert page.status_code == 200
            assert f'href="/admin/runs/{run.id}/files/output.ipynb"' in page.get_data(as_text=True)
            db.engine.dispose()
    finally:
        worker.stop()


# --- real services: PostgreSQL + RabbitMQ + a parseq worker process + S3 -------------------


@pytest.mark.services
def test_notebook_run_on_the_worker_stores_output_ipynb_in_s3(
    services_app: Flask, worker_process: Any
) -> None:
    import uuid

    name = f"pi-nb-{uuid.uuid4().hex[:8]}"
    with services_app.app_context():
        parser = add_parser(name, "pi-notebook.ipynb", kind=ParserKind.NOTEBOOK)
        run, nb = run_notebook(parser, {"digits": 10})
        assert run.status is RunStatus.COMPLETED, run.error
        assert run.worker_id.endswith(f":{worker_process.pid}")
        assert nb.metadata.parseq["parser"] == name
        storage = services_app.extensions["parseq"].storage
        key = f"results/runs/{run.id}/output.ipynb"
        head = storage.client.head_object(Bucket=storage.bucket, Key=key)
        assert head["ContentLength"] == run.file("output.ipynb").size
