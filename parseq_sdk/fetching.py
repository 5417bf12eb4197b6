"""``fetch()``: a polite, cached HTTP GET for parsers, on the standard library.

- Page cache: every successful answer is kept in ``<state dir>/cache/`` keyed by the URL with
  its query parameters, so a page is never fetched twice (or not again within ``max_age``).
- Politeness: at least ``delay_s`` between two requests to the same host.
- Retries with exponential backoff on 5xx, 429, timeouts and connection errors.
- A 4xx answer (or giving up) raises :class:`FetchError`, whose message names the URL.
"""

from __future__ import annotations

import email.message
import gzip
import hashlib
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parseq_sdk._atomic import write_atomic
from parseq_sdk.run_context import context

USER_AGENT = "parseq-sdk/0.1 (+https://github.com/parseq)"
CACHE_DIR = "cache"
MAX_RETRY_AFTER_S = 60.0


class FetchError(Exception):
    """A GET that failed for good: a 4xx answer, or still failing after the retries."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        super().__init__(f"GET {url} failed: {message}")
        self.url = url
        self.status = status


@dataclass
class Response:
    """An answer, from the network or the page cache."""

    url: str
    status: int
    headers: dict[str, str]
    content: bytes
    fetched_at: float
    from_cache: bool = False
    final_url: str = ""

    @property
    def encoding(self) -> str:
        msg = email.message.Message()
        msg["content-type"] = self.headers.get("content-type", "")
        return msg.get_content_charset() or "utf-8"

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding, "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def build_url(url: str, params: Mapping[str, Any] | None = None) -> str:
    """``url`` with ``params`` added to its query string (in the order given)."""
    if not params:
        return url
    parts = urllib.parse.urlsplit(url)
    extra = urllib.parse.urlencode([(k, _param(v)) for k, v in params.items()])
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=query))


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cache_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


class Fetcher:
    """Callable: ``fetch(url, params={...}, max_age=3600)``. Settings are attributes, so a
    parser may tune the shared instance (``fetch.delay_s = 0``) or make its own."""

    def __init__(
        self,
        *,
        delay_s: float = 1.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        timeout_s: float = 30.0,
        user_agent: str = USER_AGENT,
        cache_dir: Path | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self._cache_dir = cache_dir
        self._last_request: dict[str, float] = {}
        #: Requests that went to the network (not the cache), for reporting.
        self.network_requests = 0

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir or context.state_dir / CACHE_DIR

    def __call__(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        max_age: float | None = None,
        cache: bool = True,
        timeout_s: float | None = None,
    ) -> Response:
        """GET ``url`` with ``params``. A cached answer is used unless it is older than
        ``max_age`` seconds (``None``: any age; ``0``: always fetch) or ``cache`` is False."""
        full = build_url(url, params)
        if cache:
            hit = self.cached(full, max_age)
            if hit is not None:
                return hit
        response = self._get(full, dict(headers or {}), timeout_s or self.timeout_s)
        if cache:
            self._store(response)
        return response

    # --- cache ---------------------------------------------------------------------------

    def _paths(self, url: str) -> tuple[Path, Path]:
        key = cache_key(url)
        base = self.cache_dir / key[:2]
        return base / f"{key}.json", base / f"{key}.body"

    def cached(self, url: str, max_age: float | None = None) -> Response | None:
        """The cached answer for the full ``url``, if there is one young enough."""
        meta_path, body_path = self._paths(url)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            body = body_path.read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        if meta.get("url") != url:
            return None
        if max_age is not None and time.time() - meta["fetched_at"] > max_age:
            return None
        return Response(
            url=url,
            status=meta["status"],
            headers=meta["headers"],
            content=body,
            fetched_at=meta["fetched_at"],
            from_cache=True,
            final_url=meta.get("final_url", url),
        )

    def _store(self, response: Response) -> None:
        meta_path, body_path = self._paths(response.url)
        # Body first: the metadata file is what makes an entry count.
        write_atomic(body_path, response.content)
        meta = {
            "url": response.url,
            "final_url": response.final_url,
            "status": response.status,
            "headers": response.headers,
            "fetched_at": response.fetched_at,
        }
        write_atomic(meta_path, json.dumps(meta).encode("utf-8"))

    # --- network -------------------------------------------------------------------------

    def _wait_politely(self, url: str) -> None:
        host = urllib.parse.urlsplit(url).netloc
        last = self._last_request.get(host)
        if last is not None:
            wait = self.delay_s - (time.monotonic() - last)
            if wait > 0:
                time.sleep(wait)
        self._last_request[host] = time.monotonic()

    def _get(self, url: str, headers: dict[str, str], timeout_s: float) -> Response:
        headers.setdefault("User-Agent", self.user_agent)
        headers.setdefault("Accept-Encoding", "gzip")
        problem, retry_after = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                backoff = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(min(retry_after, MAX_RETRY_AFTER_S) if retry_after else backoff)
            self._wait_politely(url)
            self.network_requests += 1
            request = urllib.request.Request(url, headers=headers, method="GET")
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                    return self._response(url, resp.status, resp.headers, resp.read(), resp.url)
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    raise FetchError(url, problem, exc.code) from None
                retry_after = _retry_after(exc.headers)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                problem, retry_after = f"{type(reason).__name__}: {reason}", None
        raise FetchError(url, f"{problem} (gave up after {self.retries + 1} attempts)")

    @staticmethod
    def _response(url: str, status: int, headers: Any, body: bytes, final_url: str) -> Response:
        lowered = {k.lower(): v for k, v in headers.items()}
        if lowered.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
            lowered.pop("content-encoding")
            lowered.pop("content-length", None)
        return Response(url, status, lowered, body, time.time(), False, final_url or url)


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        return max(float(raw), 0.0) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


fetch = Fetcher()
