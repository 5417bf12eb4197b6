"""The README and docs/ stay whole: a short README, no broken relative link or anchor, and a
settings table that matches the config module."""

from __future__ import annotations

import dataclasses
import re
import runpy
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: Issue #22: the README is an entrance, the reference lives in docs/.
MAX_README_BYTES = 12 * 1024

_md = MarkdownIt("commonmark").enable("table")


def links(page: Path) -> list[str]:
    """Targets of every link and image in ``page`` (code spans and blocks are not links)."""
    found: list[str] = []

    def walk(tokens: list) -> None:
        for token in tokens:
            if token.type == "link_open":
                found.append(str(token.attrs["href"]))
            elif token.type == "image":
                found.append(str(token.attrs["src"]))
            if token.children:
                walk(token.children)

    walk(_md.parse(page.read_text(encoding="utf-8")))
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings (repeated headings get -1, -2...)."""
    tokens = _md.parse(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    result: set[str] = set()
    for i, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        base = slug(tokens[i + 1].content.replace("`", ""))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def relative_links(page: Path) -> list[tuple[str, Path, str]]:
    """(link as written, the file it names, its fragment) for every relative link in ``page``."""
    result = []
    for target in links(page):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue  # a web address: not checked offline
        path = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        result.append((target, path, unquote(parts.fragment)))
    return result


def test_readme_is_at_most_12_kb() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move reference into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    broken = sorted({target for target, path, _ in relative_links(page) if not path.exists()})
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_anchor_names_a_heading(page: Path) -> None:
    broken = sorted(
        {
            target
            for target, path, fragment in relative_links(page)
            if fragment and path.suffix == ".md" and path.exists() and fragment not in anchors(path)
        }
    )
    assert not broken, f"{page.relative_to(ROOT)}: links to missing headings: {broken}"


def test_the_docs_link_every_page_of_docs() -> None:
    """No orphan page: each docs/*.md is linked from the README."""
    linked = {path for _, path, _ in relative_links(README)}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_settings_table_matches_the_config_module() -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "config_doc.py"))
    page = script["PAGE"].read_text(encoding="utf-8")
    assert page == script["page_with_table"](page), (
        "docs/configuration.md differs from the config module: "
        "run python scripts/config_doc.py --write"
    )
    # One row per setting the environment can set, each a variable Config.from_env reads.
    config_cls = script["config_module"].Config
    rows = set(re.findall(r"^\| `PARSEQ_(\w+)` \|", page, re.M))
    fields = {f.name.upper() for f in dataclasses.fields(config_cls)}
    assert rows == fields - {n.upper() for n in script["NOT_SETTINGS"]}
    assert config_cls.from_env({"PARSEQ_QUEUE_NAME": "docs"}).queue_name == "docs"


def test_slug_follows_github() -> None:
    assert slug("The `parseq` command".replace("`", "")) == "the-parseq-command"
    assert slug("Bad input: what the user gets") == "bad-input-what-the-user-gets"
    assert slug("RabbitMQ consumer_timeout") == "rabbitmq-consumer_timeout"
    assert slug("Retries and limits") == "retries-and-limits"
