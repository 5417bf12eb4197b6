"""Paginated search results from quotes.toscrape.com, resumable: each run fetches the next pages.

Arguments: ``--query TAG`` (default ``love``), ``--max_pages N`` (pages per run, default 0 = all
that are left), ``--restart true`` (start over from page 1), ``--base_url TEMPLATE`` (default
``https://quotes.toscrape.com/tag/{query}/page/{page}/``; ``{query}`` and ``{page}`` are filled
in), ``--delay S`` / ``--backoff S`` (politeness and retry waits, default 1). Pages come through
the SDK's page cache, so a page is never fetched twice; results are grouped by query hash:
``results/<hash>.jsonl``.
"""

from __future__ import annotations

import hashlib
import sys
from html.parser import HTMLParser
from urllib.parse import quote

from parseq_sdk import checkpoint, context, fetch, output, output_json, progress

BASE_URL = "https://quotes.toscrape.com/tag/{query}/page/{page}/"


class QuotesPage(HTMLParser):
    """``div.quote`` items (text, author, tags) and whether there is an ``li.next`` link."""

    def __init__(self) -> None:
        super().__init__()
        self.quotes: list[dict] = []
        self.has_next = False
        self._depth = 0  # nesting inside the current div.quote; 0 = outside
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "li" and "next" in classes:
            self.has_next = True
        if self._depth:
            if tag == "div":
                self._depth += 1
            if tag == "span" and "text" in classes:
                self._field = "text"
            elif tag == "small" and "author" in classes:
                self._field = "author"
            elif tag == "a" and "tag" in classes:
                self._field = "tag"
                self.quotes[-1]["tags"].append("")
        elif tag == "div" and "quote" in classes:
            self._depth = 1
            self.quotes.append({"text": "", "author": "", "tags": []})

    def handle_endtag(self, tag: str) -> None:
        if tag in ("span", "small", "a"):
            self._field = None
        elif tag == "div" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._depth or self._field is None:
            return
        quote_ = self.quotes[-1]
        if self._field == "tag":
            quote_["tags"][-1] += data.strip()
        else:
            quote_[self._field] += data

    def result(self) -> list[dict]:
        return [
            {**q, "text": q["text"].strip().strip("\u201c\u201d"), "author": q["author"].strip()}
            for q in self.quotes
        ]


def parse_page(html: str) -> tuple[list[dict], bool]:
    page = QuotesPage()
    page.feed(html)
    page.close()
    return page.result(), page.has_next


def query_hash(query: str) -> str:
    return hashlib.sha256(query.strip().lower().encode()).hexdigest()[:12]


def main() -> int:
    fetch.delay_s = context.args.float("delay", 1.0)  # politeness: seconds between requests
    fetch.backoff_s = context.args.float("backoff", 1.0)  # first retry wait, doubling
    template = context.args.str("base_url", BASE_URL)
    query = context.args.str("query", "love").strip()
    if "{page}" not in template:
        print("--base_url must contain {page}", file=sys.stderr)
        return 2
    qhash = query_hash(query)
    pages = checkpoint(f"quotes-{qhash}")
    if pages.finished:
        output(f"query {query!r} [{qhash}]: all pages done; run with --restart true to start over")
        return 0
    results = f"results/{qhash}.jsonl"
    bar = progress(total=pages.max_pages or None, message=f"query {query!r}")
    for page in pages:
        url = template.format(query=quote(query, safe=""), page=page)
        quotes, has_next = parse_page(fetch(url).text)
        for item in quotes:
            output_json({"query": query, "page": page, **item}, file=results)
        output(f"query {query!r} [{qhash}]: page {page}: {len(quotes)} quotes")
        bar.update()
        if not has_next:
            pages.finish()
            output(f"query {query!r} [{qhash}]: last page reached")
            break
    bar.close()
    if pages.pages_done and not pages.finished:
        output(f"query {query!r} [{qhash}]: next run starts at page {pages.next_page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
