# /// script
# dependencies = ["beautifulsoup4==4.15.0"]
# ///
"""Paginated search results from quotes.toscrape.com, resumable: each run fetches the next pages.

Arguments: ``--query TAG`` (default ``love``), ``--max_pages N`` (pages per run, default 0 = all
that are left), ``--restart`` (start over from page 1), ``--base_url TEMPLATE`` (default
``https://quotes.toscrape.com/tag/{query}/page/{page}/``; ``{query}`` and ``{page}`` are filled
in), ``--delay S`` / ``--backoff S`` (politeness and retry waits, default 1). Pages come through
the SDK's page cache, so a page is never fetched twice; they are parsed with BeautifulSoup (the
stdlib ``html.parser`` backend, so no lxml); results are grouped by query hash:
``results/<hash>.jsonl``. Its requirements are the PEP 723 block above: Parseq runs it in a
virtualenv of its own (see README "Parser environments").
"""

from __future__ import annotations

import hashlib
import sys
from urllib.parse import quote

from bs4 import BeautifulSoup, Tag

from parseq_sdk import checkpoint, context, fetch, output, output_json, progress

BASE_URL = "https://quotes.toscrape.com/tag/{query}/page/{page}/"


def parse_page(html: str) -> tuple[list[dict], bool]:
    """``div.quote`` items (text, author, tags) and whether there is an ``li.next`` link."""
    soup = BeautifulSoup(html, "html.parser")  # stdlib backend: no lxml needed
    quotes = [
        {
            "text": _text(item.select_one("span.text")).strip("\u201c\u201d"),
            "author": _text(item.select_one("small.author")),
            "tags": [_text(tag) for tag in item.select("a.tag")],
        }
        for item in soup.select("div.quote")
    ]
    return quotes, soup.select_one("li.next") is not None


def _text(node: Tag | None) -> str:
    return node.get_text().strip() if node is not None else ""


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
        output(f"query {query!r} [{qhash}]: all pages done; run with --restart to start over")
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
