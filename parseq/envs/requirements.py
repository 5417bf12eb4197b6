"""A parser's requirements: where they come from, validation, and normalization.

Sources, first non-empty wins (see README "Parser environments"):

1. the parser's ``requirements`` field (admin/API): an explicit override;
2. ``requirements.txt`` beside the script when the parser is a folder
   (``parsers/<name>/requirements.txt``);
3. PEP 723 inline script metadata (``# /// script`` ... ``dependencies = [...]``).

Normalized lines make the env key: order, case, whitespace and duplicates do not change it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from parseq.core.config import Config
from parseq.core.errors import ValidationError

#: PEP 723's reference regular expression for inline metadata blocks.
PEP723_RE = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")
INDEX_OPTIONS = {"-i": "--index-url", "--index-url": "--index-url"}
INDEX_OPTIONS["--extra-index-url"] = "--extra-index-url"
#: pip's comment rule: ``#`` at the start of a line or after whitespace, to the end.
COMMENT_RE = re.compile(r"(^|\s+)#.*$")
HASH_OPTION = "--hash="
HASH_RE = re.compile(r"(?:^|\s)--hash(?:=|\s+)(\S+)")
OPTION_RE = re.compile(r"(?:^|\s)(--?[A-Za-z][\w-]*)")
HASH_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
HEX_RE = re.compile(r"[0-9a-f]+")
#: What the kernel engine needs in the parser's env: nbclient drives an ipykernel there.
KERNEL_PACKAGES = ("ipykernel", "nbclient")


@dataclass(frozen=True)
class Requirements:
    """A parser's normalized requirement lines and the source they came from."""

    lines: tuple[str, ...]
    source: str  # "parser", "requirements.txt", "pep723" or "none"


@dataclass(frozen=True)
class Policy:
    """What requirement lines may do beyond naming PyPI packages (admin settings)."""

    allow_unsafe: bool = False
    allowed_index_urls: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        urls = {u.strip().rstrip("/") for u in config.env_allowed_index_urls.split(",")}
        return cls(config.env_allow_unsafe_requirements, frozenset(u for u in urls if u))


def parse(text: str, policy: Policy = Policy(), where: str = "requirements") -> tuple[str, ...]:
    """Validate requirement text in pip's requirements-file syntax and return it normalized and
    sorted: PEP 508 lines, ``\\`` continuations, comments, and ``--hash`` options as
    ``pip-compile --generate-hashes`` and ``uv pip compile --generate-hashes`` write them.

    Options that could run arbitrary installers or fetch code from anywhere (``-e``, ``-r``,
    ``--find-links``, direct URLs, local paths) are refused unless the policy allows them; an
    ``--index-url`` must be in the allowed list. Hashes follow pip's hash-checking mode: once a
    line has one, every requirement needs one and must be pinned with ``==``.
    """
    seen: dict[str, int] = {}
    for number, line in logical_lines(text):
        try:
            seen.setdefault(_normalize(line, policy), number)
        except ValueError as exc:
            raise ValidationError(f"{where} line {number}: {exc}", field="requirements") from None
    if any(HASH_OPTION in line for line in seen):
        for line, number in seen.items():
            if name_of(line) and HASH_OPTION not in line:
                raise ValidationError(
                    f"{where} line {number}: {line!r} has no --hash, which every requirement "
                    "needs once one has (pip's hash-checking mode)",
                    field="requirements",
                )
    return tuple(sorted(seen))


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """pip's logical lines: a line ending in ``\\`` continues on the next; comments (``#`` at
    the start or after whitespace) are dropped; each comes with its first line's number."""
    joined: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not joined:
            start = number
        if raw.endswith("\\") and not COMMENT_RE.match(raw):
            joined.append(raw[:-1])
            continue
        joined.append(raw)
        line = COMMENT_RE.sub("", "".join(joined)).strip()
        joined = []
        if line:
            yield start, line
    line = COMMENT_RE.sub("", "".join(joined)).strip()
    if line:  # a continuation on the last line
        yield start, line


def _normalize(line: str, policy: Policy) -> str:
    if line.startswith("-"):
        return _option(line, policy)
    hashes = sorted({_check_hash(h) for h in HASH_RE.findall(line)})
    spec = HASH_RE.sub(" ", line).strip()
    if OPTION_RE.search(spec):
        if policy.allow_unsafe and not hashes:
            return " ".join(line.split())
        option = OPTION_RE.search(spec).group(1)  # type: ignore[union-attr]
        raise ValueError(
            f"option {option!r} is not allowed (PARSEQ_ENV_ALLOW_UNSAFE_REQUIREMENTS enables it)"
        )
    try:
        req = Requirement(spec)
    except InvalidRequirement as exc:
        raise ValueError(f"{spec!r} is not a valid requirement: {exc}") from None
    if req.url and not policy.allow_unsafe:
        raise ValueError(
            f"{spec!r} installs from a URL or path, which is not allowed "
            "(PARSEQ_ENV_ALLOW_UNSAFE_REQUIREMENTS enables it)"
        )
    req.name = canonicalize_name(req.name)
    req.extras = {canonicalize_name(e) for e in req.extras}
    if hashes and not req.url and not _pinned(req):
        raise ValueError(f"{spec!r} has a --hash, so it must be pinned with == (no wildcard)")
    return " ".join([str(req), *(f"{HASH_OPTION}{h}" for h in hashes)])


def _option(line: str, policy: Policy) -> str:
    option, _, value = line.replace("=", " ", 1).partition(" ")
    value = value.strip()
    if option in INDEX_OPTIONS and value:
        if policy.allow_unsafe or value.rstrip("/") in policy.allowed_index_urls:
            return f"{INDEX_OPTIONS[option]} {value}"
        raise ValueError(
            f"index {value!r} is not allowed (PARSEQ_ENV_ALLOWED_INDEX_URLS lists the allowed)"
        )
    if policy.allow_unsafe:
        return " ".join(line.split())
    raise ValueError(
        f"option {option!r} is not allowed (PARSEQ_ENV_ALLOW_UNSAFE_REQUIREMENTS enables it)"
    )


def _check_hash(value: str) -> str:
    """``algorithm:hexdigest`` with an algorithm pip accepts, lowercased."""
    algorithm, _, digest = value.lower().partition(":")
    if HASH_HEX_LENGTHS.get(algorithm) != len(digest) or not HEX_RE.fullmatch(digest):
        raise ValueError(f"--hash={value} is not sha256:, sha384: or sha512: and a hex digest")
    return f"{algorithm}:{digest}"


def _pinned(req: Requirement) -> bool:
    specs = list(req.specifier)
    return (
        len(specs) == 1
        and specs[0].operator in ("==", "===")
        and not specs[0].version.endswith("*")
    )


def name_of(line: str) -> str | None:
    """The project name of a normalized requirement line; None for an option line."""
    if line.startswith("-"):
        return None
    try:
        return Requirement(HASH_RE.sub(" ", line).strip()).name
    except InvalidRequirement:
        return None


def inline_dependencies(script: Path) -> list[str] | None:
    """PEP 723 ``dependencies`` of a script (or a notebook's code cells); None when absent."""
    try:
        text = script.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if script.suffix == ".ipynb":
        text = _notebook_code(text)
    blocks = [m for m in PEP723_RE.finditer(text) if m.group("type") == "script"]
    if not blocks:
        return None
    if len(blocks) > 1:
        raise ValidationError("more than one '# /// script' block", field="requirements")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML parser in the standard library
        raise ValidationError("PEP 723 metadata needs Python 3.11+", field="requirements") from None
    try:
        deps = tomllib.loads(content).get("dependencies", [])
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"PEP 723 metadata: {exc}", field="requirements") from None
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise ValidationError("PEP 723 dependencies must be strings", field="requirements")
    return deps


def _notebook_code(text: str) -> str:
    try:
        cells = json.loads(text).get("cells", [])
    except (ValueError, AttributeError):
        return ""
    sources = (c.get("source", "") for c in cells if c.get("cell_type") == "code")
    return "\n".join(s if isinstance(s, str) else "".join(s) for s in sources) + "\n"


def resolve(
    config: Config, *, field: str | None, script: Path, own_folder: bool, kernel: bool
) -> Requirements:
    """A parser's requirements by precedence: its ``field``, the ``requirements.txt`` beside its
    script when the script has a folder of its own, PEP 723; the kernel engine (``kernel``) also
    gets what runs its kernel (unless it pins them)."""
    found = _declared(config, field, script, own_folder)
    if not kernel:
        return found
    names = {name_of(line) for line in found.lines}
    extra = [p for p in KERNEL_PACKAGES if canonicalize_name(p) not in names]
    return Requirements(tuple(sorted({*found.lines, *extra})), found.source)


def _declared(config: Config, field: str | None, script: Path, own_folder: bool) -> Requirements:
    policy = Policy.from_config(config)
    if (field or "").strip():
        return Requirements(parse(field or "", policy), "parser")
    if own_folder:
        txt = script.parent / "requirements.txt"
        if txt.is_file():
            text = txt.read_text(encoding="utf-8")
            return Requirements(parse(text, policy, "requirements.txt"), "requirements.txt")
    deps = inline_dependencies(script)
    if deps is not None:
        return Requirements(parse("\n".join(deps), policy, "PEP 723 dependency"), "pep723")
    return Requirements((), "none")
