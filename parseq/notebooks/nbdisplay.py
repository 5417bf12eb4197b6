"""Rich outputs without a kernel: MIME bundles as IPython builds them, ``display()``, and the
import hooks that make matplotlib and ``IPython.display`` publish into the running cell.

Part of the notebook executor (:mod:`parseq.notebooks.nbexec`): standard library only, runs in the
parser's interpreter, and imports nothing heavy until a notebook uses it (the fast path stays
fast: a notebook that never imports matplotlib never loads the backend).
"""

from __future__ import annotations

import binascii
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

#: IPython's ``DisplayFormatter`` order: MIME type and the ``_repr_*_`` method giving it.
FORMATS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("application/pdf", "_repr_pdf_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)
#: Stored base64 in ``.ipynb`` when a repr method returns bytes.
BINARY = frozenset({"image/png", "image/jpeg", "application/pdf"})
#: The matplotlib backend Parseq installs (``nbinline.py``), as ipykernel installs its own.
INLINE_BACKEND = "parseq_inline"


def _call(method: Any, *args: Any, **kwargs: Any) -> Any:
    """A repr method's result; None when it raises (a broken repr only loses that format)."""
    try:
        return method(*args, **kwargs)
    except Exception:
        return None


def _encode(mime: str, value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        if mime in BINARY:
            return binascii.b2a_base64(bytes(value), newline=False).decode("ascii")
        return bytes(value).decode("utf-8", "replace")
    return value


def _is_figure(obj: Any) -> bool:
    cls = type(obj)
    return cls.__name__ == "Figure" and cls.__module__ == "matplotlib.figure"


def figure_png(fig: Any) -> bytes | None:
    """A figure as the inline backend shows it (tight bounding box); None when it is empty."""
    if not fig.axes and not fig.lines and not fig.images and not fig.texts:
        return None
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def mime_bundle(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, metadata)`` for an object, as IPython's formatter builds them:
    ``_repr_mimebundle_`` first, then each ``_repr_*_`` it did not give, and ``text/plain``."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    is_class = isinstance(obj, type)  # a class has the methods unbound: no rich output
    bundle = None if is_class else getattr(obj, "_repr_mimebundle_", None)
    if callable(bundle):
        value = _call(bundle, include=None, exclude=None)
        if isinstance(value, tuple) and len(value) == 2:
            value, md = value
            if isinstance(md, dict):
                metadata.update(md)
        if isinstance(value, dict):
            data.update((k, _encode(k, v)) for k, v in value.items() if v is not None)
    for mime, name in () if is_class else FORMATS:
        method = getattr(obj, name, None)
        if mime in data or not callable(method):
            continue
        value = _call(method)
        if isinstance(value, tuple) and len(value) == 2:
            value, md = value
            if isinstance(md, dict):
                metadata[mime] = md
        if value is not None:
            data[mime] = _encode(mime, value)
    if _is_figure(obj) and "image/png" not in data:
        png = _call(figure_png, obj)
        if png:
            data["image/png"] = _encode("image/png", png)
    if "text/plain" not in data:
        try:
            data["text/plain"] = repr(obj)
        except Exception as exc:  # a broken __repr__ must not fail the run
            data["text/plain"] = f"<repr failed: {exc!r}>"
    return {"text/plain": data.pop("text/plain"), **data}, metadata


class Display:
    """``display()`` and its friends (IPython's names and signatures), publishing into the
    cell that runs. ``sink`` is called with each nbformat output dict."""

    def __init__(self, sink: Callable[[dict[str, Any]], None], clear: Callable[[], None]):
        self.sink, self.clear = sink, clear
        self.by_id: dict[str, list[dict[str, Any]]] = {}

    def publish_display_data(
        self,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        *_args: Any,
        transient: dict[str, Any] | None = None,
        update: bool = False,
        **_kwargs: Any,
    ) -> None:
        display_id = (transient or {}).get("display_id")
        if update and display_id in self.by_id:
            for output in self.by_id[display_id]:  # Jupyter shows the last update in place
                output["data"], output["metadata"] = dict(data), dict(metadata or {})
            return
        output = {"output_type": "display_data", "data": dict(data), "metadata": metadata or {}}
        if display_id:
            self.by_id.setdefault(display_id, []).append(output)
        text = data.get("text/plain")
        if isinstance(text, str):  # the run log shows what the notebook displayed
            print(text, file=sys.__stdout__)
        self.sink(output)

    def display(
        self,
        *objs: Any,
        raw: bool = False,
        metadata: dict[str, Any] | None = None,
        display_id: Any = None,
        update: bool = False,
        clear: bool = False,
        **_kwargs: Any,
    ) -> Any:
        if clear:
            self.clear_output()
        if display_id is True:
            display_id = binascii.hexlify(os.urandom(8)).decode()
        transient = {"display_id": str(display_id)} if display_id else None
        for obj in objs:
            if raw and isinstance(obj, dict):
                self.publish_display_data(obj, metadata, transient=transient, update=update)
                continue
            hook = None if isinstance(obj, type) else getattr(obj, "_ipython_display_", None)
            if callable(hook):
                hook()
                continue
            data, md = mime_bundle(obj)
            self.publish_display_data(
                data, {**md, **(metadata or {})}, transient=transient, update=update
            )
        return DisplayHandle(self, str(display_id)) if display_id else None

    def update_display(self, obj: Any, *, display_id: str, **kwargs: Any) -> None:
        self.display(obj, display_id=display_id, update=True, **kwargs)

    def clear_output(self, wait: bool = False) -> None:
        self.clear()


class DisplayHandle:
    """What ``display(..., display_id=True)`` returns: update that output in place."""

    def __init__(self, owner: Display, display_id: str) -> None:
        self.owner, self.display_id = owner, display_id

    def display(self, obj: Any, **kwargs: Any) -> None:
        self.owner.display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj: Any, **kwargs: Any) -> None:
        self.owner.update_display(obj, display_id=self.display_id, **kwargs)


class ImportHooks:
    """A ``sys.meta_path`` finder that adjusts a few modules as they load, as running inside a
    kernel would: ``after[name](module)`` runs once the module's code ran; ``files`` maps a
    module name to a file of this folder (the matplotlib backend)."""

    def __init__(
        self, after: dict[str, Callable[[ModuleType], None]], files: dict[str, str]
    ) -> None:
        self.after, self.files = after, files

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        hook = self.after.get(name)
        if name in self.files:
            import importlib.util

            spec = importlib.util.spec_from_file_location(name, self.files[name])
        elif hook is None:
            return None
        else:
            spec = self.others_spec(name, path, target)
        if hook is None:
            return spec
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_code = loader.exec_module  # a loader is made per spec: wrap this one only

        def exec_module(module: ModuleType) -> None:
            run_code(module)
            try:
                hook(module)
            except Exception as exc:  # a newer release moved things: run without the hook
                print(f"parseq: could not adapt {name}: {exc!r}", file=sys.__stderr__)

        loader.exec_module = exec_module
        return spec

    def others_spec(self, name: str, path: Any, target: Any) -> Any:
        """The spec the other finders give (where the module would load from without us)."""
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is not self and find is not None:
                spec = find(name, path, target)
                if spec is not None:
                    return spec
        return None


def use_inline_backend(matplotlib: ModuleType) -> None:
    """matplotlib's default backend becomes Parseq's inline one (MPLBACKEND still wins)."""
    if not os.environ.get("MPLBACKEND"):
        matplotlib.rcParams["backend"] = f"module://{INLINE_BACKEND}"


def ipython_display_hook(display: Display) -> Callable[[ModuleType], None]:
    """Replace IPython's display functions (which print reprs without a kernel) by ours."""

    def patch(module: ModuleType) -> None:
        for name in ("display", "publish_display_data", "update_display", "clear_output"):
            if hasattr(module, name):
                setattr(module, name, getattr(display, name))

    return patch


def install_hooks(display: Display) -> ImportHooks:
    """Put the hooks first on ``sys.meta_path``; return them."""
    here = os.path.dirname(os.path.abspath(__file__))
    patch_ipython = ipython_display_hook(display)
    hooks = ImportHooks(
        after={
            "matplotlib": use_inline_backend,
            INLINE_BACKEND: lambda module: setattr(module, "display", display.display),
            "IPython.core.display_functions": patch_ipython,
            "IPython.core.display": patch_ipython,
        },
        files={INLINE_BACKEND: os.path.join(here, "nbinline.py")},
    )
    sys.meta_path.insert(0, hooks)
    return hooks
