"""The fast engine's Jupyter fidelity: rich outputs, plots, IPython's display and magics,
through real runs (each ``output.ipynb`` validated with nbformat by ``run_notebook``)."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any

from flask import Flask
from nbformat.v4 import new_code_cell, new_markdown_cell

from parseq.db.models import NotebookEngine, Parser, RunStatus, db
from parseq.notebooks import validate as notebooks
from tests.conftest import admin_client, api_client
from tests.test_notebooks import add_notebook, result, run_notebook, stream, write_nb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: One env for the plotting tests (same requirements: built once per session).
PLOT_REQUIREMENTS = "matplotlib\nseaborn\nipython"

REPRS = """
class Rich:
    def _repr_html_(self): return "<b>html</b>"
    def _repr_markdown_(self): return "*md*", {"isolated": True}
    def _repr_svg_(self): return "<svg xmlns='http://www.w3.org/2000/svg'></svg>"
    def _repr_png_(self): return b"\\x89PNG\\r\\n\\x1a\\npng"
    def _repr_jpeg_(self): return b"\\xff\\xd8jpeg"
    def _repr_latex_(self): return "$x^2$"
    def _repr_json_(self): return {"a": [1, 2]}
    def _repr_pdf_(self): return b"%PDF-1.4"
    def _repr_javascript_(self): return "console.log(1)"
    def __repr__(self): return "Rich()"

class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": "plain", "text/html": "<i>from bundle</i>"}, {"text/html": {"m": 1}}
    def _repr_html_(self): return "<i>not used: the bundle has html</i>"
    def _repr_latex_(self): return "$y$"

class Broken:
    def _repr_html_(self): raise ValueError("broken repr")
    def __repr__(self): return "Broken()"
"""


def data_of(cell: Any, kind: str = "execute_result", index: int = 0) -> dict[str, Any]:
    found = [o for o in cell.outputs if o["output_type"] == kind]
    return dict(found[index]["data"])


def test_every_repr_method_gives_its_mime_type_in_ipython_order(embedded_app: Flask) -> None:
    parser = add_notebook(
        embedded_app,
        "reprs",
        [
            new_code_cell(REPRS),
            new_code_cell("Rich()"),
            new_code_cell("display(Bundle(), Broken())\nRich;"),
            new_code_cell(
                "h = display('first', display_id=True)\nh.update('second')\n"
                "display({'text/plain': 'raw'}, raw=True)"
            ),
            new_code_cell("print('gone')\nfrom builtins import display as d\nd(1, clear=True)"),
        ],
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.COMPLETED, run.error
    _defs, rich, bundle, handle, cleared = nb.cells
    data = data_of(rich)
    assert list(data) == [
        "text/plain",
        "text/html",
        "text/markdown",
        "image/svg+xml",
        "image/png",
        "application/pdf",
        "image/jpeg",
        "text/latex",
        "application/json",
        "application/javascript",
    ]
    assert base64.b64decode(data["application/pdf"]) == b"%PDF-1.4"
    assert data["text/plain"] == "Rich()" and data["application/json"] == {"a": [1, 2]}
    assert base64.b64decode(data["image/png"]) == PNG_MAGIC + b"png"
    assert base64.b64decode(data["image/jpeg"]) == b"\xff\xd8jpeg"
    assert rich.outputs[0]["metadata"] == {"text/markdown": {"isolated": True}}

    from_bundle, broken = (dict(o) for o in bundle.outputs)
    assert from_bundle["data"] == {
        "text/plain": "plain",
        "text/html": "<i>from bundle</i>",
        "text/latex": "$y$",
    }
    assert from_bundle["metadata"] == {"text/html": {"m": 1}}
    assert broken["data"] == {"text/plain": "Broken()"}  # a failing repr loses only its type
    assert len(bundle.outputs) == 2  # "Rich;" hides the value

    updated, raw = (dict(o) for o in handle.outputs)
    assert updated["data"] == {"text/plain": "'second'"}  # updated in place, as Jupyter shows
    assert raw["data"] == {"text/plain": "raw"}
    assert [dict(o)["data"] for o in cleared.outputs] == [{"text/plain": "1"}]


def test_magics_of_the_fast_engine(embedded_app: Flask) -> None:
    parser = add_notebook(
        embedded_app,
        "magics",
        [
            new_code_cell("%time total = sum(range(10))\n%time total * 2"),
            new_code_cell("%%time\nx = 5\nx * 2"),
            new_code_cell("%timeit -n 2 -r 2 sum(range(10))\n%timeit sum(range(10))"),
            new_code_cell("%%timeit -n 3\ny = [i for i in range(5)]"),
            new_code_cell("%%capture captured\nprint('hidden')\ndisplay('shown later')\n42"),
            new_code_cell("print(repr(captured.stdout))\ncaptured.show()"),
            new_code_cell("%%writefile notes.txt\nline 1\n"),
            new_code_cell("%%writefile -a notes.txt\nline 2\n"),
            new_code_cell("%cd ..\n%cd output\n%env MODE=fast\n%env MODE"),
            new_code_cell("%pwd"),
            new_code_cell("%who"),
            new_code_cell(
                "import os, pathlib\nout = pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'])\n"
                "(out / 'notes.txt').write_text(open('notes.txt').read())"
            ),
        ],
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.COMPLETED, run.error
    (
        time_line,
        time_cell,
        timeit_line,
        timeit_cell,
        capture,
        show,
        write,
        append,
        cd,
        pwd,
        who,
        _,
    ) = nb.cells
    assert stream(time_line).count("Wall time: ") == 2 and "CPU times: user " in stream(time_line)
    assert result(time_line) == "90"
    assert "Wall time: " in stream(time_cell) and result(time_cell) == "10"
    first, second = stream(timeit_line).splitlines()
    assert first.endswith("per loop (mean ± std. dev. of 2 runs, 2 loops each)")
    assert " ± " in second and "loops each)" in second
    assert stream(timeit_cell).endswith("(mean ± std. dev. of 3 runs, 3 loops each)\n")
    assert capture.outputs == []  # %%capture keeps the cell empty, its value too
    assert stream(show) == "'hidden\\n'\nhidden\n"
    assert data_of(show, "display_data") == {"text/plain": "'shown later'"}
    assert stream(write) == "Writing notes.txt\n" and stream(append) == "Appending to notes.txt\n"
    work = Path(eval(result(pwd)))
    assert stream(cd).splitlines() == [str(work.parent), str(work), "env: MODE=fast"]
    assert result(cd) == "'fast'"  # %env NAME gives the value
    assert "captured" in stream(who).split() and "x" in stream(who).split()
    notes = api_client(embedded_app).get(f"/api/v1/runs/{run.id}/files/notes.txt").data
    assert notes == b"line 1\nline 2\n"


def test_plots_and_ipython_display_in_a_matplotlib_env(embedded_app: Flask) -> None:
    parser = add_notebook(
        embedded_app,
        "plots",
        [
            new_markdown_cell("Plots as JupyterLab shows them"),
            new_code_cell(
                "import sys\n'matplotlib' in sys.modules, 'parseq_inline' in sys.modules"
            ),
            new_code_cell(
                "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
                "plt.plot([1, 2, 3])\nplt.show()\nprint('after show')"
            ),
            new_code_cell("fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 1])"),
            new_code_cell(
                "import seaborn as sns\nfor i in range(2):\n"
                "    plt.figure()\n    sns.lineplot(x=[1, 2, 3], y=[i, 2, 1])"
            ),
            new_code_cell("fig"),
            new_code_cell("import matplotlib.pyplot as plt\nplt.figure();"),
            new_code_cell(
                "import io\nfrom IPython.display import HTML, Image, Markdown, display\n"
                "buf = io.BytesIO()\nfig.savefig(buf, format='png')\n"
                "display(HTML('<b>bold</b>'), Markdown('**md**'))\nImage(data=buf.getvalue())"
            ),
        ],
        requirements=PLOT_REQUIREMENTS,
    )
    run, nb = run_notebook(parser)
    assert run.status is RunStatus.COMPLETED, run.error
    _md, before, show, open_fig, seaborn, fig_value, empty, ipython = nb.cells
    assert result(before) == "(False, False)"  # no import, nothing loaded: the fast path

    def pngs(cell: Any) -> list[bytes]:
        images = [o["data"].get("image/png") for o in cell.outputs if "data" in o]
        return [base64.b64decode(i) for i in images if i]

    assert [o["output_type"] for o in show.outputs] == ["display_data", "stream"]
    assert stream(show) == "after show\n"
    assert all(p.startswith(PNG_MAGIC) for p in pngs(show)) and len(pngs(show)) == 1
    # the value first, then the figure still open at the end of the cell (then closed)
    assert [o["output_type"] for o in open_fig.outputs] == ["execute_result", "display_data"]
    assert open_fig.outputs[1]["data"]["text/plain"].startswith("<Figure size")
    assert len(pngs(open_fig)) == 1
    assert len(pngs(seaborn)) == 2
    assert len(pngs(fig_value)) == 1  # a figure as a value renders as an image
    assert empty.outputs == []  # nothing drawn: no image
    html, md, image = (dict(o) for o in ipython.outputs)
    assert html["data"]["text/html"] == "<b>bold</b>"
    assert md["data"]["text/markdown"] == "**md**"
    assert image["output_type"] == "execute_result"
    assert base64.b64decode(image["data"]["image/png"]).startswith(PNG_MAGIC)


# --- validation at save: what the fast engine refuses is a warning, not a run-time surprise --

UNSUPPORTED = [
    new_markdown_cell("# Title"),
    new_code_cell("%time x = 1\n!echo ok"),  # supported: no warning
    new_code_cell("len?"),
    new_code_cell("%%bash\necho hi"),
    new_code_cell("pip install requests"),
    new_code_cell("def broken(:\n    pass"),
]
EXPECTED_WARNINGS = [
    "cell 3: 'len?': IPython help (obj?) is not supported by the fast engine",
    "cell 4: cell magic %%bash is not supported by the fast engine",
    "cell 5: 'pip install requests' is not run by Parseq",
    "cell 6: SyntaxError: ",
]


def _check_warnings(warnings: list[str]) -> None:
    assert len(warnings) == len(EXPECTED_WARNINGS), warnings
    for warning, start in zip(warnings, EXPECTED_WARNINGS, strict=True):
        assert warning.startswith(start), warning
    assert "engine to kernel" in warnings[0] and "requirements" in warnings[2]


def test_syntax_warnings_name_each_cell_the_fast_engine_refuses(tmp_path: Path) -> None:
    rel = write_nb(tmp_path, "ipy", UNSUPPORTED)
    _check_warnings(notebooks.syntax_warnings(notebooks.validate_notebook(tmp_path / rel)))
    clean = write_nb(tmp_path, "clean", [new_code_cell("%%capture\n!ls\n%cd /")])
    assert notebooks.syntax_warnings(notebooks.validate_notebook(tmp_path / clean)) == []


def test_api_and_admin_save_the_parser_and_warn(sqlite_app: Flask) -> None:
    root = sqlite_app.extensions["parseq"].config.notebooks_dir
    rel = write_nb(root, "ipy", UNSUPPORTED)
    client = api_client(sqlite_app)
    resp = client.post("/api/v1/parsers", json={"name": "ipy", "kind": "notebook", "path": rel})
    assert resp.status_code == 201, resp.json
    _check_warnings(resp.json["warnings"])
    resp = client.patch("/api/v1/parsers/ipy", json={"description": "d"})
    assert resp.status_code == 200 and len(resp.json["warnings"]) == 4
    resp = client.patch("/api/v1/parsers/ipy", json={"engine": "turbo"})
    assert resp.status_code == 422
    assert resp.json["error"]["fields"] == {"engine": "must be 'fast' or 'kernel'"}
    resp = client.patch("/api/v1/parsers/ipy", json={"engine": "kernel"})
    assert resp.status_code == 200  # IPython itself runs those lines: nothing to warn about
    assert (resp.json["engine"], resp.json["warnings"]) == ("kernel", [])
    resp = client.post(
        "/api/v1/parsers", json={"name": "script", "path": "echo_env.py", "kind": "script"}
    )
    assert resp.status_code == 201 and resp.json["warnings"] == []

    admin = admin_client(sqlite_app)
    form = {"default_args": "{}", "max_retries": "0", "enabled": "y"}
    resp = admin.post(
        "/admin/parsers/new/",
        data={**form, "name": "ipy2", "script": f"notebook:{rel}", "csrf_token": admin.csrf_token},
        follow_redirects=True,
    )
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert db.session.execute(db.select(Parser).filter_by(name="ipy2")).scalar_one()
    assert "Warning: cell 3: &#39;len?&#39;: IPython help" in page
    assert "Warning: cell 4: cell magic %%bash" in page


# --- the rendered view -----------------------------------------------------------------------

XSS_HTML = (
    '<b id="rich">rich html</b>'
    "<script>document.getElementById('rich').textContent = 'pwned'</script>"
    "<img src=x onerror=\"document.getElementById('rich').textContent = 'pwned'\">"
)
RENDERED_CELLS = [
    new_markdown_cell("# Rendered heading\n\nSome **bold** prose."),
    new_code_cell(f"print('from stdout')\ndisplay({{'text/html': {XSS_HTML!r}}}, raw=True)"),
    new_code_cell("1 / 0"),
]


def test_output_ipynb_as_a_sandboxed_html_page(embedded_app: Flask) -> None:
    parser = add_notebook(embedded_app, "rendered", RENDERED_CELLS)
    run, _nb = run_notebook(parser)
    assert run.status is RunStatus.ERROR
    client = api_client(embedded_app)
    url = f"/api/v1/runs/{run.id}/files/output.ipynb"
    resp = client.get(f"{url}?format=html")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and csp.endswith("; sandbox") and "script-src" not in csp
    page = resp.get_data(as_text=True)
    assert ">Rendered heading<" in page and "<strong>bold</strong>" in page
    assert "from stdout" in page and "ZeroDivisionError" in page
    assert '<b id="rich">rich html</b>' in page  # as is: the sandbox makes its script inert
    assert "<script>document.getElementById('rich')" in page

    admin_page = admin_client(embedded_app).get(f"/admin/runs/details/?id={run.id}")
    html = admin_page.get_data(as_text=True)
    frame = f'src="/admin/runs/{run.id}/files/output.ipynb?format=html"'
    assert "<iframe sandbox " in html and frame in html
    assert XSS_HTML not in html  # only inside the sandboxed frame
    resp = admin_client(embedded_app).get(f"/admin/runs/{run.id}/files/output.ipynb?format=html")
    assert resp.status_code == 200 and resp.headers["Content-Security-Policy"] == csp

    resp = client.get(f"/api/v1/runs/{run.id}/files/output.txt?format=html")
    assert resp.status_code == 400
    assert resp.json["error"]["message"] == "format=html is only for .ipynb files"
    state = embedded_app.extensions["parseq"]
    config = state.config
    state.config = replace(config, max_render_bytes=10)
    try:
        resp = client.get(f"{url}?format=html")
    finally:
        state.config = config
    assert resp.status_code == 422 and "PARSEQ_MAX_RENDER_BYTES" in resp.json["error"]["message"]


def test_admin_saves_the_engine_and_kernel_notebooks_get_no_warning(sqlite_app: Flask) -> None:
    root = sqlite_app.extensions["parseq"].config.notebooks_dir
    rel = write_nb(root, "ipy", UNSUPPORTED)
    admin = admin_client(sqlite_app)
    form = {"default_args": "{}", "max_retries": "0", "enabled": "y", "engine": "kernel"}
    resp = admin.post(
        "/admin/parsers/new/",
        data={**form, "name": "k", "script": f"notebook:{rel}", "csrf_token": admin.csrf_token},
        follow_redirects=True,
    )
    assert resp.status_code == 200 and "Warning:" not in resp.get_data(as_text=True)
    parser = db.session.execute(db.select(Parser).filter_by(name="k")).scalar_one()
    assert parser.engine is NotebookEngine.KERNEL
    page = admin.get(f"/admin/parsers/edit/?id={parser.id}").get_data(as_text=True)
    assert '<option selected value="kernel">' in page
