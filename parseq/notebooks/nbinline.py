"""matplotlib backend ``module://parseq_inline``: figures become ``image/png`` outputs of the
cell, as Jupyter's inline backend makes them (at ``plt.show()``, and for figures still open
when the cell ends; shown figures are closed).

Loaded only by matplotlib, once a notebook imports it (the executor makes this backend the
default, see :mod:`parseq.notebooks.nbdisplay`); matplotlib comes from the parser's requirements. The
executor sets ``display`` when it loads this module.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def display(*objs: Any, **kwargs: Any) -> None:  # replaced by the executor's on load
    raise RuntimeError("parseq_inline is used outside Parseq's notebook executor")


def show(close: bool | None = None, block: bool | None = None) -> None:
    """Publish every open figure that has something drawn, then close them all."""
    try:
        for num in plt.get_fignums():
            fig = plt.figure(num)
            if fig.axes or fig.lines or fig.images or fig.texts:
                display(fig)
    finally:
        plt.close("all")


def flush_figures() -> None:
    """End of a cell: what the cell drew and did not show yet is shown now."""
    if plt.get_fignums():
        show()
