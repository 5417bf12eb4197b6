"""Fetch a web page and report its ``<title>`` (the parser-service lab).

Arguments: ``--url URL`` (default ``https://example.com/``), ``--max_age S`` (reuse a cached
copy up to S seconds old; default 0: always fetch), ``--delay S`` / ``--backoff S`` (politeness
and retry waits, default 1). Writes the title to ``output.txt`` and ``title.json``.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser

from parseq_sdk import context, fetch, output, save_file

DEFAULT_URL = "https://example.com/"


class TitleParser(HTMLParser):
    """The text of the first ``<title>``."""

    def __init__(self) -> None:
        super().__init__()
        self.title: str | None = None
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and self.title is None:
            self._inside, self.title = True, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.title = (self.title or "") + data


def page_title(html: str) -> str | None:
    parser = TitleParser()
    parser.feed(html)
    parser.close()
    return " ".join(parser.title.split()) if parser.title is not None else None


def main() -> int:
    fetch.delay_s = context.args.float("delay", 1.0)  # politeness: seconds between requests
    fetch.backoff_s = context.args.float("backoff", 1.0)  # first retry wait, doubling
    url = context.args.str("url", DEFAULT_URL)
    response = fetch(url, max_age=context.args.float("max_age", 0))
    title = page_title(response.text)
    output(title if title is not None else "(no title)")
    save_file(
        "title.json",
        {"url": url, "final_url": response.final_url, "status": response.status, "title": title},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
