"""Benchmark: a trivial 3-cell notebook through Parseq's runner, the same code as a script,
the same notebook with the kernel engine, and through papermill (a Jupyter kernel per run).

Run on demand (not part of the tests): ``make bench BENCH=notebooks``, or
``python -m bench notebooks -- --repeat 20 --papermill-repeat 5``.

Papermill and ipykernel are installed with uv into a bench-only virtualenv under
``var/bench-venvs/papermill`` (built once, from PyPI); the script and the notebook run in a bare
virtualenv, ``var/bench-venvs/bare``, as a parser without requirements would. Every variant is
spawned and supervised by :mod:`parseq.sandbox.runner` in the same sandboxed environment a run gets,
so the numbers compare what a worker pays; the notebook also as a worker starts it by default,
forked from its env's fork server. Prints medians and the ratios the notebooks issue targets:
notebook overhead over the script <= 50 ms, >= 50x faster than papermill, and the kernel engine
within 1.2x of papermill's wall time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nbformat
import psutil
from nbformat.v4 import new_code_cell, new_notebook

from parseq.core.argv import build_command
from parseq.core.config import PROJECT_ROOT
from parseq.db.models import NotebookEngine
from parseq.notebooks import validate as notebooks
from parseq.sandbox import forkserver, runner, supervisor

CELLS = ["x = 1", "y = x * 2\nprint(y)", "y + 1"]
BENCH_VENVS = PROJECT_ROOT / "var" / "bench-venvs"
UV = Path(sys.executable).with_name("uv")


def bench_venv(name: str, *packages: str) -> Path:
    """A bench-only virtualenv under ``var/bench-venvs/<name>``; built once with uv."""
    venv = BENCH_VENVS / name
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        print(f"building {venv} {' '.join(packages)} with uv ...", flush=True)
        subprocess.run(
            [str(UV), "venv", "-q", "--allow-existing", str(venv), "--python", sys.executable],
            check=True,
        )
        if packages:
            subprocess.run(
                [str(UV), "pip", "install", "-q", "--python", str(python), *packages], check=True
            )
        (venv / ".complete").touch()
    return venv


def _children_cpu_s(python: str | None = None) -> float:
    """CPU of our reaped children, or with ``python`` of its fork server's (its runs)."""
    if python is None:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    server = forkserver._servers.get(python)
    if server is None:  # started by the next spawn
        return 0.0
    times = psutil.Process(server.proc.pid).cpu_times()
    return times.children_user + times.children_system


def timed_run(argv: list[str], work: Path, fork: bool = False) -> tuple[float, float]:
    """Spawn and supervise ``argv`` as a run would be (with ``fork``, from a fork server);
    wall seconds from spawn to exit, and the CPU seconds the process (and its children) used:
    steadier on a busy machine."""
    dirs = {name: work / name for name in ("work", "output", "home", "tmp", "state")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env = runner.build_env(
        base_env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        run_id=1,
        parser="bench",
        args={"x": 2},
        secrets={},
        output_dir=dirs["output"],
        state_dir=dirs["state"],
        home_dir=dirs["home"],
        tmp_dir=dirs["tmp"],
    )
    python = argv[0] if fork else None
    started, cpu = time.perf_counter(), _children_cpu_s(python)
    proc = runner.spawn(argv, env, cwd=dirs["work"], fork_servers=2 if fork else 0)
    outcome = supervisor.supervise(proc, work / "run.log", timeout_s=120)
    elapsed, cpu = time.perf_counter() - started, _children_cpu_s(python) - cpu
    if outcome.status.value != "completed":
        raise SystemExit(f"{argv[:3]} failed: {outcome.error}\n{(work / 'run.log').read_text()}")
    return elapsed, cpu


def measure(
    name: str,
    repeat: int,
    make_argv: Callable[[Path], list[str]],
    root: Path,
    fork: bool = False,
) -> tuple[float, float]:
    """Median wall and CPU seconds over ``repeat`` runs, after one warm-up run."""
    walls, cpus = [], []
    for i in range(repeat + 1):
        work = root / f"{name}-{i}"
        wall, cpu = timed_run(make_argv(work), work, fork)
        if i:  # the first run warms the page cache and .pyc files
            walls.append(wall)
            cpus.append(cpu)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(
        f"{name:<20} wall median {wall * 1000:7.1f} ms (min {min(walls) * 1000:6.1f})"
        f"   cpu median {cpu * 1000:7.1f} ms   n={repeat}"
    )
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--papermill-repeat", type=int, default=5)
    # python -m bench a b -- ARGS gives ARGS to each: options for another benchmark are ignored.
    opts, _ = ap.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="parseq-bench-nb-") as tmp:
        root = Path(tmp)
        nb = new_notebook(cells=[new_code_cell(c) for c in CELLS])
        nb.cells[0].metadata["tags"] = ["parameters"]
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(nb, root / "trivial.ipynb")
        (root / "trivial.py").write_text("\n".join(CELLS) + "\n")
        # A parser runs in a virtualenv of its own: a bare one here, as for a parser with no
        # requirements (Parseq's own .venv would add its site-packages to every start).
        python = str(bench_venv("bare") / "bin" / "python")
        papermill = bench_venv("papermill", "papermill", "ipykernel") / "bin" / "papermill"

        script = measure(
            "script (runner)", opts.repeat,
            lambda w: build_command(python, root / "trivial.py", {"x": 2}), root,
        )  # fmt: skip
        notebook = measure(
            "notebook (runner)", opts.repeat,
            lambda w: notebooks.build_command(
                python, root / "trivial.ipynb", w / "output" / "output.ipynb", {"x": 2}
            ),
            root,
        )  # fmt: skip
        forked = measure(
            "notebook (forked)", opts.repeat,
            lambda w: notebooks.build_command(
                python, root / "trivial.ipynb", w / "output" / "output.ipynb", {"x": 2}
            ),
            root,
            fork=True,
        )  # fmt: skip
        # The kernel engine in an env with what it adds to a parser's requirements (the
        # papermill env has both: ipykernel, and nbclient as papermill's own engine).
        kernel_python = str(papermill.with_name("python"))
        kernel = measure(
            "kernel engine", opts.papermill_repeat,
            lambda w: notebooks.build_command(
                kernel_python, root / "trivial.ipynb", w / "output" / "output.ipynb", {"x": 2},
                engine=NotebookEngine.KERNEL,
            ),
            root,
        )  # fmt: skip
        paper = measure(
            "papermill (kernel)", opts.papermill_repeat,
            lambda w: [str(papermill), "--no-progress-bar", str(root / "trivial.ipynb"),
                       str(w / "output" / "output.ipynb"), "-p", "x", "2"],
            root,
        )  # fmt: skip
    print()
    for i, what in enumerate(("wall", "cpu")):
        overhead = (notebook[i] - script[i]) * 1000
        print(f"{what}: notebook overhead over the script {overhead:+.1f} ms (target <= 50);")
        print(
            f"     papermill / notebook {paper[i] / notebook[i]:.1f}x (target >= 50x), "
            f"papermill / script {paper[i] / script[i]:.1f}x"
        )
        print(f"     papermill / notebook forked from a fork server {paper[i] / forked[i]:.1f}x")
        print(f"     kernel engine / papermill {kernel[i] / paper[i]:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
