"""The Parseq parser SDK: everything a parser needs, standard library only.

    from parseq_sdk import context, output, progress, fetch, checkpoint

It wraps the parser contract (``PARSEQ_*`` environment variables) and works the same outside
Parseq (``python parsers/x.py``, a Jupyter kernel) with a local ``.parseq/`` folder. It imports
nothing of Parseq's server side, so it is safe in any parser environment.
"""

from __future__ import annotations

from parseq_sdk.fetching import Fetcher, FetchError, Response, fetch
from parseq_sdk.reporting import Tracker, progress
from parseq_sdk.results import FileNameError, output, output_json, save_file
from parseq_sdk.run_context import ArgError, Args, Context, Secrets, context
from parseq_sdk.store import Checkpoint, State, checkpoint, state

__version__ = "0.1.0"
__all__ = [
    "ArgError",
    "Args",
    "Checkpoint",
    "Context",
    "FetchError",
    "Fetcher",
    "FileNameError",
    "Response",
    "Secrets",
    "State",
    "Tracker",
    "checkpoint",
    "context",
    "fetch",
    "output",
    "output_json",
    "progress",
    "save_file",
    "state",
]
