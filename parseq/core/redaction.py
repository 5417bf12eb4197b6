"""Replace secret values by ``***`` in what Parseq stores: run logs, error messages, progress.

Pure functions plus one small stateful :class:`StreamRedactor` for a stream read in pieces.
Values shorter than :data:`MIN_SECRET_LEN` are not redacted: a 1-3 character "secret" would turn
every log into asterisks and hides nothing. A multi-line secret is also redacted line by line,
so each of its lines is caught even when the parser prints it in pieces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

MASK = b"***"
MIN_SECRET_LEN = 4


def needles(values: Iterable[str]) -> tuple[bytes, ...]:
    """The byte strings to hide, longest first (so a secret containing another is masked
    whole): each value, and each line of a multi-line value."""
    found: set[bytes] = set()
    for value in values:
        raw = str(value).encode("utf-8", "surrogateescape")
        for piece in (raw, *raw.splitlines()):
            piece = piece.strip(b"\r")
            if len(piece) >= MIN_SECRET_LEN:
                found.add(piece)
    return tuple(sorted(found, key=lambda n: (-len(n), n)))


def redact(data: bytes, hidden: tuple[bytes, ...]) -> bytes:
    """``data`` with every occurrence of each needle replaced by ``***``."""
    for needle in hidden:
        if needle in data:
            data = data.replace(needle, MASK)
    return data


def redact_text(text: str | None, values: Iterable[str]) -> str | None:
    """The same for a message already decoded (a run's error)."""
    if not text:
        return text
    hidden = needles(values)
    if not hidden:
        return text
    return redact(text.encode("utf-8", "surrogateescape"), hidden).decode("utf-8", "replace")


def redact_json_file(path: Path, values: Iterable[str]) -> None:
    """Mask secrets in a JSON file in place (an executed notebook: its cell outputs are the run's
    log too). A value appears there JSON-escaped, so both spellings are masked."""
    values = [str(v) for v in values]
    hidden = needles(values + [json.dumps(v)[1:-1] for v in values])
    if not hidden or not path.is_file():
        return
    data = path.read_bytes()
    masked = redact(data, hidden)
    if masked != data:
        path.write_bytes(masked)


class StreamRedactor:
    """Redacts a stream fed in pieces. Pieces normally are whole lines (``readline``), which
    are redacted at once; a piece cut mid-line (a size-limited read) keeps its last
    ``longest - 1`` bytes back until more arrives, so a secret split across two pieces is still
    masked."""

    def __init__(self, values: Iterable[str]) -> None:
        self.hidden = needles(values)
        self.keep = max((len(n) for n in self.hidden), default=1) - 1
        self.pending = b""

    def feed(self, piece: bytes) -> bytes:
        if not self.hidden:
            return piece
        data = redact(self.pending + piece, self.hidden)
        if data.endswith(b"\n") or self.keep == 0:
            self.pending = b""
            return data
        cut = max(len(data) - self.keep, 0)
        self.pending = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        """What is held back, at the end of the stream."""
        data, self.pending = self.pending, b""
        return data


def webhook_target(url: str) -> str:
    """The URL without its path, query or credentials: Slack's URLs carry their secret."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"
