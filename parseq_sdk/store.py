"""``state``: a small JSON key-value store that persists between runs of a parser, and
``checkpoint()``: resumable pagination on top of it.

The store is one file, ``state.json`` in ``PARSEQ_STATE_DIR``, rewritten atomically on every
change, so a run that is killed mid-way leaves the last complete state for the next run. A
change is made under a lock on the file as it is then (re-read), so two runs of one parser at
the same moment keep each other's keys.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

from parseq_sdk._atomic import write_atomic

try:
    import fcntl
except ImportError:  # Windows, in local mode: one process at a time is the usual case there
    fcntl = None  # type: ignore[assignment]
from parseq_sdk.run_context import context

STATE_FILE = "state.json"
CHECKPOINT_PREFIX = "checkpoint:"


class State(MutableMapping[str, Any]):
    """JSON values by string key: ``state["cursor"] = 3``; ``state.get("cursor", 1)``."""

    def __init__(self, path: Path | None = None) -> None:
        self._fixed_path = path
        self._data: dict[str, Any] = {}
        self._loaded_from: Path | None = None

    @property
    def path(self) -> Path:
        return self._fixed_path or context.state_dir / STATE_FILE

    def _load(self) -> dict[str, Any]:
        path = self.path
        if self._loaded_from != path:
            self._data = _read(path)
            self._loaded_from = path
        return self._data

    def _change(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to the file's current contents, under the lock, and write it."""
        path = self.path
        with _locked(path):
            data = _read(path)
            change(data)
            text = json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True)
            write_atomic(path, text.encode("utf-8"))
        self._data, self._loaded_from = data, path

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"state keys are strings, got {key!r}")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"state[{key!r}] must be JSON-serializable: {exc}") from None
        self._change(lambda data: data.__setitem__(key, value))

    def __delitem__(self, key: str) -> None:
        if key not in self._load():
            raise KeyError(key)
        self._change(lambda data: data.pop(key, None))

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._load()))

    def __len__(self) -> int:
        return len(self._load())

    def reload(self) -> None:
        """Forget what was read, so the next access reads the file again."""
        self._loaded_from = None

    def __repr__(self) -> str:
        return f"State({self._load()!r})"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (the file itself is replaced on every write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


state = State()
_restarted: set[str] = set()


class Checkpoint:
    """Page numbers to fetch, resuming where the previous run stopped.

    Iterating yields ``next``, ``next + 1``, ...: a page counts as done once the loop body
    finished it (asks for the next one), so a page whose processing failed or broke out of the
    loop is fetched again next time. After ``max_pages`` pages the run stops and the next run
    continues. Call :meth:`finish` when the listing has no more pages; later runs then yield
    nothing until a restart.
    """

    def __init__(
        self,
        name: str = "pages",
        *,
        start: int = 1,
        max_pages: int | None = None,
        restart: bool | None = None,
        store: State | None = None,
    ) -> None:
        self.name = name
        self.key = CHECKPOINT_PREFIX + name
        self.start = start
        self.max_pages = context.args.int("max_pages", 0) if max_pages is None else max_pages
        self.store = store if store is not None else state
        self.pages_done: list[int] = []
        if restart is None:
            # The run's `restart` arg resets each checkpoint once per process.
            restart = context.args.bool("restart", False) and self.key not in _restarted
            if restart:
                _restarted.add(self.key)
        if restart:
            self.reset()

    @property
    def _record(self) -> dict[str, Any]:
        value = self.store.get(self.key)
        return value if isinstance(value, dict) else {}

    @property
    def next_page(self) -> int:
        """The page the next iteration starts at."""
        return int(self._record.get("next", self.start))

    @property
    def finished(self) -> bool:
        return bool(self._record.get("finished", False))

    def __iter__(self) -> Iterator[int]:
        if self.finished:
            return
        page = self.next_page
        while not self.max_pages or len(self.pages_done) < self.max_pages:
            yield page
            self.pages_done.append(page)
            page += 1
            self.store[self.key] = {**self._record, "next": page}

    def __length_hint__(self) -> int:
        """Pages this run will yield at most (for progress bars); unknown without a limit."""
        return NotImplemented if not self.max_pages or self.finished else self.max_pages

    def finish(self) -> None:
        """Mark the listing as done: the last page was reached."""
        self.store[self.key] = {**self._record, "finished": True}

    def reset(self) -> None:
        """Start over from ``start`` (what the ``restart`` arg does)."""
        self.store.pop(self.key, None)

    def __repr__(self) -> str:
        return (
            f"Checkpoint({self.name!r}, next_page={self.next_page}, finished={self.finished}, "
            f"max_pages={self.max_pages})"
        )


def checkpoint(
    name: str = "pages",
    *,
    start: int = 1,
    max_pages: int | None = None,
    restart: bool | None = None,
) -> Checkpoint:
    """Resumable pagination: ``for page in checkpoint(max_pages=2): ...``.

    ``max_pages`` defaults to the run's ``max_pages`` arg (absent or 0: no limit); ``restart``
    defaults to its ``restart`` arg.
    """
    return Checkpoint(name, start=start, max_pages=max_pages, restart=restart)
