"""A local HTTP server standing in for the public sites the demo parsers read.

It serves sample pages in the real sites' formats (CBR daily XML, open-meteo JSON, the
quotes.toscrape.com HTML layout, a plain page with a title), counts every hit, and can be told
to answer a path with a scripted series of statuses (``500, 500, 200``).
"""

from __future__ import annotations

import html
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

SAMPLES = Path(__file__).resolve().parent / "fixtures" / "sites"
QUOTES_PER_PAGE = 3
QUOTE_PAGES = {"love": 5, "life": 2}


def quote_text(query: str, page: int, i: int) -> str:
    return f"Quote {i} on page {page} about {query} & more"


def quotes_page(query: str, page: int) -> str:
    """A page in quotes.toscrape.com's layout: ``div.quote`` items and a ``li.next`` link."""
    pages = QUOTE_PAGES.get(query, 0)
    items = []
    if 1 <= page <= pages:
        for i in range(1, QUOTES_PER_PAGE + 1):
            tags = "".join(
                f'<a class="tag" href="/tag/{t}/page/1/">{t}</a>\n' for t in (query, f"tag{i}")
            )
            text = html.escape(quote_text(query, page, i))
            items.append(
                f"""<div class="quote" itemscope itemtype="http://schema.org/CreativeWork">
        <span class="text" itemprop="text">\u201c{text}\u201d</span>
        <span>by <small class="author" itemprop="author">Author {page}-{i}</small>
        <a href="/author/Author-{page}-{i}">(about)</a>
        </span>
        <div class="tags">
            Tags:
            <meta class="keywords" itemprop="keywords" content="{query},tag{i}" / >
            {tags}
        </div>
    </div>"""
            )
    else:
        items.append("No quotes found!")
    pager = ""
    if page < pages:
        pager = (
            f'<li class="next"><a href="/tag/{query}/page/{page + 1}/">Next '
            '<span aria-hidden="true">&rarr;</span></a></li>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>Quotes to Scrape</title></head>
<body><div class="container"><div class="row"><div class="col-md-8">
{"".join(items)}
<nav><ul class="pager">{pager}</ul></nav>
</div></div></div></body></html>"""


class Site:
    """The running server: ``url(path)``, ``hits[path_with_query]``, ``script(path, codes)``."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.scripted: dict[str, deque[int]] = defaultdict(deque)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def script(self, path: str, statuses: list[int]) -> None:
        """Answer the next requests for ``path`` with these statuses, then normally."""
        self.scripted[path].extend(statuses)

    def hits_for(self, prefix: str) -> int:
        return sum(n for key, n in self.hits.items() if key.startswith(prefix))

    def start(self) -> Site:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        one = {k: v[0] for k, v in query.items()}
        if path == "/scripts/XML_daily.asp":
            xml = (SAMPLES / "cbr_daily.xml").read_bytes()
            return 200, "application/xml; charset=windows-1251", xml
        if path == "/v1/search":
            if one.get("name", "").lower() != "berlin":
                return 200, "application/json", b'{"generationtime_ms":0.2}'
            return 200, "application/json", (SAMPLES / "geocoding.json").read_bytes()
        if path == "/v1/forecast":
            return 200, "application/json", (SAMPLES / "forecast.json").read_bytes()
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "tag" and parts[2] == "page" and parts[3].isdigit():
            return 200, "text/html; charset=utf-8", quotes_page(parts[1], int(parts[3])).encode()
        if path == "/search":  # the same listing as ?q=...&page=N
            page = int(one.get("page", "1"))
            return 200, "text/html; charset=utf-8", quotes_page(one.get("q", ""), page).encode()
        if path in ("/article", "/flaky"):
            body = (
                "<html><head><meta charset='utf-8'>\n<title>\n  Parsing &amp; Scheduling \u2014 "
                "a guide\n</title></head><body><h1>Hi</h1><title>not this</title></body></html>"
            )
            return 200, "text/html; charset=utf-8", body.encode()
        if path == "/slow":
            time.sleep(float(one.get("s", "2")))
            return 200, "text/plain", b"slow"
        return 404, "text/html", b"<h1>Not Found</h1>"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with site.lock:
                    site.hits[self.path] += 1
                    queued = site.scripted.get(parts.path)
                    forced = queued.popleft() if queued else None
                if forced is not None and forced != 200:
                    status, ctype, body = forced, "text/plain", b"scripted failure"
                else:
                    status, ctype, body = site._route(parts.path, parse_qs(parts.query))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        return Handler
