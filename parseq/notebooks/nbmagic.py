"""The IPython magics the fast notebook engine runs itself: ``%time``, ``%%time``,
``%timeit``, ``%%capture``, ``%%writefile``, ``%cd``, ``%pwd``, ``%env``, ``%who``.

Part of the notebook executor (:mod:`parseq.notebooks.nbexec`): standard library only, runs in the
parser's interpreter. :func:`parseq.notebooks.nbsyntax.translate` turns a magic line into
``__parseq_magic__(name, arguments)`` and a cell magic into
``__parseq_cell_magic__(name, arguments, body)``; these run here, printing what IPython prints.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Runner(Protocol):
        ns: dict[str, Any]

        def run_source(self, source: str) -> Any: ...

        def capture(self) -> Any: ...


LINE_MAGICS = frozenset({"time", "timeit", "cd", "pwd", "env", "who"})
CELL_MAGICS = frozenset({"time", "timeit", "capture", "writefile"})
#: %timeit stops adding loops once one batch takes this long (IPython aims at 0.2 s).
TIMEIT_BATCH_S = 0.05
TIMEIT_REPEAT = 3


def _duration(seconds: float) -> str:
    """IPython's ``_format_time``: 3 significant digits in s, ms, µs or ns."""
    for unit, scale in (("s", 1.0), ("ms", 1e3), ("µs", 1e6), ("ns", 1e9)):
        if seconds >= 1.0 / scale or unit == "ns":
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds:.3g} s"  # pragma: no cover


class Magics:
    """The magics of one executor (its namespace, its way to run source as a cell)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def line(self, name: str, arg: str) -> Any:
        return getattr(self, f"line_{name}")(arg.strip())

    def cell(self, name: str, arg: str, body: str) -> Any:
        return getattr(self, f"cell_{name}")(arg.strip(), body)

    # --- timing -----------------------------------------------------------------------------

    def line_time(self, arg: str) -> Any:
        return self.cell_time("", arg)

    def cell_time(self, _arg: str, body: str) -> Any:
        before, wall = os.times(), time.perf_counter()
        try:
            return self.runner.run_source(body)
        finally:
            after, wall = os.times(), time.perf_counter() - wall
            user, system = after.user - before.user, after.system - before.system
            print(
                f"CPU times: user {_duration(user)}, sys: {_duration(system)}, "
                f"total: {_duration(user + system)}\nWall time: {_duration(wall)}"
            )

    def line_timeit(self, arg: str) -> None:
        loops, repeat, statement = _timeit_options(arg)
        self.cell_timeit(f"-n {loops} -r {repeat}" if loops else f"-r {repeat}", statement)

    def cell_timeit(self, arg: str, body: str) -> None:
        loops, repeat, _ = _timeit_options(arg)
        # Compiled once, as IPython does: the loops time the code, not its compilation.
        code = compile(body, "<timeit>", "exec", dont_inherit=True)
        ns = self.runner.ns

        def batch(n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                eval(code, ns)  # nosec B307  # the notebook's own cell, in its sandbox
            return time.perf_counter() - started

        if not loops:  # 1, 10, 100... until a batch is long enough to measure
            loops = 1
            while batch(loops) < TIMEIT_BATCH_S and loops < 10**6:
                loops *= 10
        per_loop = [batch(loops) / loops for _ in range(repeat)]
        mean = sum(per_loop) / len(per_loop)
        std = (sum((t - mean) ** 2 for t in per_loop) / len(per_loop)) ** 0.5
        runs = "run" if repeat == 1 else "runs"
        each = "loop" if loops == 1 else "loops"
        print(
            f"{_duration(mean)} ± {_duration(std)} per loop (mean ± std. dev. of {repeat} "
            f"{runs}, {loops:,} {each} each)"
        )

    # --- output and files -------------------------------------------------------------------

    def cell_capture(self, arg: str, body: str) -> None:
        """Run the cell with its outputs kept out of the notebook, in ``var`` if named."""
        names = [a for a in arg.split() if not a.startswith("-")]
        with self.runner.capture() as captured:
            self.runner.run_source(body)  # its value is not shown either, as in IPython
        if names:
            self.runner.ns[names[0]] = captured

    def cell_writefile(self, arg: str, body: str) -> None:
        append = arg.startswith(("-a ", "--append "))
        path = os.path.expanduser(arg.split(None, 1)[1] if append else arg).strip("'\"")
        exists = os.path.exists(path)
        verb = "Appending to" if append and exists else "Overwriting" if exists else "Writing"
        print(f"{verb} {path}")
        with open(path, "a" if append else "w", encoding="utf-8") as fh:
            fh.write(body)

    def line_cd(self, arg: str) -> None:
        os.chdir(os.path.expanduser(arg.strip("'\"") or "~"))
        print(os.getcwd())

    def line_pwd(self, _arg: str) -> str:
        return os.getcwd()

    def line_env(self, arg: str) -> Any:
        if not arg:
            return dict(os.environ)
        if "=" in arg or " " in arg:
            sep = "=" if "=" in arg else " "
            key, _, value = arg.partition(sep)
            os.environ[key.strip()] = value.strip()
            print(f"env: {key.strip()}={value.strip()}")
            return None
        return os.environ.get(arg)

    def line_who(self, arg: str) -> None:
        kinds = set(arg.split())
        names = sorted(
            name
            for name, value in self.runner.ns.items()
            if not name.startswith("_")
            and name not in ("In", "Out", "exit", "quit", "get_ipython", "display")
            and (not kinds or type(value).__name__ in kinds)
        )
        print("\t".join(names) if names else "Interactive namespace is empty.")


def _timeit_options(arg: str) -> tuple[int, int, str]:
    """``-n LOOPS -r REPEAT statement`` (IPython's options; ``-q``, ``-o``... are ignored)."""
    loops, repeat, words = 0, TIMEIT_REPEAT, arg.split(" ")
    while words and words[0].startswith("-") and len(words[0]) == 2:
        flag = words.pop(0)
        if flag == "-n" and words:
            loops = max(1, int(words.pop(0)))
        elif flag == "-r" and words:
            repeat = max(1, int(words.pop(0)))
    return loops, repeat, " ".join(words)


class Captured:
    """``%%capture``'s result, as IPython's ``CapturedIO``: text and display outputs;
    ``show()`` (or calling it) replays them into the cell that calls it."""

    def __init__(self, publish: Any) -> None:
        self.outputs: list[dict[str, Any]] = []
        self.publish = publish

    def _text(self, name: str) -> str:
        return "".join(
            o["text"] for o in self.outputs if o["output_type"] == "stream" and o["name"] == name
        )

    @property
    def stdout(self) -> str:
        return self._text("stdout")

    @property
    def stderr(self) -> str:
        return self._text("stderr")

    def show(self) -> None:
        for output in self.outputs:
            if output["output_type"] == "stream":
                (sys.stdout if output["name"] == "stdout" else sys.stderr).write(output["text"])
            elif "data" in output:
                self.publish(output["data"], output.get("metadata"))

    __call__ = show
