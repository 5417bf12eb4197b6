"""The parser SDK (``parseq_sdk``) in-process under a Parseq-like environment, in local mode in
a subprocess, and the worker's side of it (``parseq.worker.sdk``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from parseq.worker import sdk
from parseq_sdk import (
    ArgError,
    Args,
    Checkpoint,
    Fetcher,
    FetchError,
    FileNameError,
    State,
    checkpoint,
    context,
    output,
    output_json,
    progress,
    save_file,
)
from parseq_sdk import reporting as sdk_reporting
from parseq_sdk.run_context import parse_argv, split_argv
from tests.conftest import add_parser, api_client, wait_for_run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """This process looks like a parser inside a Parseq run."""
    dirs = {name: tmp_path / name for name in ("output", "state")}
    for path in dirs.values():
        path.mkdir()
    dirs["progress"] = tmp_path / "progress.json"
    monkeypatch.setenv("PARSEQ_RUN_ID", "42")
    monkeypatch.setenv("PARSEQ_PARSER", "demo")
    monkeypatch.setenv("PARSEQ_ARGS", json.dumps({"max_pages": 2, "query": "love"}))
    monkeypatch.setenv("PARSEQ_OUTPUT_DIR", str(dirs["output"]))
    monkeypatch.setenv("PARSEQ_STATE_DIR", str(dirs["state"]))
    monkeypatch.setenv("PARSEQ_PROGRESS_FILE", str(dirs["progress"]))
    monkeypatch.setenv("PARSEQ_SECRET_NAMES", "API_TOKEN")
    monkeypatch.setenv("API_TOKEN", "tok-123-secret")
    return dirs


# --- context -------------------------------------------------------------------------------


def test_context_reads_the_contract(run_env: dict[str, Path]) -> None:
    assert context.under_parseq is True
    assert context.run_id == 42
    assert context.parser == "demo"
    assert context.output_dir == run_env["output"]
    assert context.state_dir == run_env["state"]
    assert context.args.int("max_pages") == 2
    assert context.args.str("query") == "love"
    assert context.args.bool("restart") is False


@pytest.mark.parametrize(
    ("method", "raw", "expected"),
    [
        ("int", "3", 3),
        ("int", 3.0, 3),
        ("float", "2.5", 2.5),
        ("bool", "true", True),
        ("bool", "0", False),
        ("bool", True, True),
        ("list", "USD, EUR", ["USD", "EUR"]),
        ("list", '["a", "b"]', ["a", "b"]),
        ("list", ["x"], ["x"]),
        ("str", 5, "5"),
        ("json", '{"a": 1}', {"a": 1}),
    ],
)
def test_args_typed_accessors_convert(method: str, raw: Any, expected: Any) -> None:
    assert getattr(Args({"v": raw}), method)("v") == expected


@pytest.mark.parametrize(
    ("method", "raw"),
    [("int", "x"), ("int", 2.5), ("int", True), ("float", "nan"), ("bool", "maybe")],
)
def test_args_bad_values_name_the_argument(method: str, raw: Any) -> None:
    with pytest.raises(ArgError, match="argument 'v' must be"):
        getattr(Args({"v": raw}), method)("v")


def test_args_defaults_and_dash_underscore_aliases() -> None:
    args = Args({"max-pages": "4", "none": None})
    assert args.int("max_pages") == 4
    assert args["max_pages"] == "4"
    assert args.int("missing", 7) == 7
    assert args.str("none", "d") == "d"


def test_parse_argv_pairs_flags_and_short_options() -> None:
    assert parse_argv(["--a", "1", "--b=2", "--flag", "-f", "kernel.json", "--last"]) == {
        "a": "1",
        "b": "2",
        "flag": True,
        "f": "kernel.json",
        "last": True,
    }


def test_split_argv_reads_a_command_line_as_parseq_builds_it() -> None:
    # What runner.build_command makes of {"m": 20, "r": true, "s": "phones"} and positionals.
    argv = ["-m", "20", "-r", "-s", "phones", "--pages", "-1", "out.csv", "--", "--raw"]
    assert split_argv(argv) == (
        {"m": "20", "r": True, "s": "phones", "pages": "-1"},
        [
            "out.csv",
            "--raw",
        ],
    )


def test_positional_comes_from_the_contract_under_parseq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARSEQ_POSITIONAL", '["a.csv", 3]')
    assert context.positional == ["a.csv", 3]
    monkeypatch.delenv("PARSEQ_POSITIONAL")
    monkeypatch.setattr(sys, "argv", ["x.py", "in.txt", "-v"])
    assert context.positional == ["in.txt"]


def test_secrets_are_readable_but_never_shown(run_env: dict[str, Path]) -> None:
    token = context.secrets["API_TOKEN"]
    assert token == "tok-123-secret"
    assert f"Bearer {token}" == "Bearer tok-123-secret"
    for shown in (repr(token), repr(context.secrets), repr(context), str(dict(context.secrets))):
        assert "tok-123" not in shown
    assert list(context.secrets) == ["API_TOKEN"]
    with pytest.raises(KeyError, match="secret 'PATH' is not set"):
        context.secrets["PATH"]  # only the parser's own secrets under Parseq


# --- results -------------------------------------------------------------------------------


def test_output_appends_lines_and_json_lines(run_env: dict[str, Path]) -> None:
    output("first")
    output(2)
    output_json({"a": 1, "name": "Ёж"})
    output_json([1, 2], file="data/items.jsonl")
    assert (run_env["output"] / "output.txt").read_text().splitlines() == [
        "first",
        "2",
        '{"a": 1, "name": "Ёж"}',
    ]
    assert (run_env["output"] / "data/items.jsonl").read_text() == "[1, 2]\n"


def test_save_file_stores_text_bytes_json_and_copies(
    run_env: dict[str, Path], tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(b"\x00\x01" * 1000)
    save_file("a.txt", "text")
    save_file("b.bin", b"\xff")
    save_file("c/d.json", {"k": [1]})
    save_file("copy.bin", source)
    out = run_env["output"]
    assert (out / "a.txt").read_text() == "text"
    assert (out / "b.bin").read_bytes() == b"\xff"
    assert json.loads((out / "c/d.json").read_text()) == {"k": [1]}
    assert (out / "copy.bin").read_bytes() == source.read_bytes()
    assert not [p for p in out.rglob(".*")]  # no temporary files left


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../x", "a/../../x", "a//b", ".hidden", "a\\b", "x\x00", "run.log", "d/"],
)
def test_save_file_refuses_bad_names(run_env: dict[str, Path], name: str) -> None:
    with pytest.raises(FileNameError):
        save_file(name, "x")
    assert list(run_env["output"].iterdir()) == []


# --- progress ------------------------------------------------------------------------------


def test_progress_writes_a_throttled_report_the_worker_reads(run_env: dict[str, Path]) -> None:
    for i in range(1, 501):
        progress(i, 1000, f"item {i}")
    sdk_reporting.flush()
    assert sdk.read_progress(run_env["progress"]) == sdk.Progress(500.0, 1000.0, "item 500")
    progress(1000, 1000, "done")  # reaching the total is written at once
    assert sdk.read_progress(run_env["progress"]) == sdk.Progress(1000.0, 1000.0, "done")


def test_progress_wraps_loops_like_tqdm(run_env: dict[str, Path]) -> None:
    seen = [item for item in progress(["a", "b", "c"], message="letters")]
    assert seen == ["a", "b", "c"]
    assert sdk.read_progress(run_env["progress"]) == sdk.Progress(3.0, 3.0, "letters")
    with progress(total=4) as bar:
        bar.update(2)
        bar.set_description("half")
    assert sdk.read_progress(run_env["progress"]) == sdk.Progress(2.0, 4.0, "half")
    with pytest.raises(ValueError, match="finite number"):
        progress(float("nan"))


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[1, 2]", b'{"done": "x"}', b'{"done": true}', b'{"done": 1e999}'],
)
def test_read_progress_ignores_what_is_not_a_report(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "progress.json"
    path.write_bytes(content)
    assert sdk.read_progress(path) is None
    assert sdk.read_progress(tmp_path / "missing.json") is None


# --- state and checkpoints -----------------------------------------------------------------


def test_state_persists_between_instances(run_env: dict[str, Path]) -> None:
    first = State()
    first["cursor"] = {"page": 3}
    first["seen"] = [1, 2]
    del first["seen"]
    again = State()
    assert dict(again) == {"cursor": {"page": 3}}
    assert json.loads((run_env["state"] / "state.json").read_text()) == {"cursor": {"page": 3}}
    with pytest.raises(TypeError, match="JSON-serializable"):
        again["bad"] = object()
    assert "bad" not in State()


def test_two_processes_writing_state_at_once_keep_each_others_keys(tmp_path: Path) -> None:
    """Two runs of one parser at the same moment (overlap "allow"): every key either wrote is
    in the file after, where whole-file rewrites of a stale copy would drop some."""
    path = tmp_path / "state.json"
    writer = (
        "import sys\n"
        "from pathlib import Path\n"
        "from parseq_sdk.store import State\n"
        "store = State(Path(sys.argv[1]))\n"
        "for i in range(150):\n"
        "    store[f'{sys.argv[2]}{i}'] = i\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", writer, str(path), prefix], cwd=REPO)
        for prefix in ("a", "b")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    data = json.loads(path.read_text())
    assert len(data) == 300
    assert data["a149"] == data["b149"] == 149


def test_checkpoint_resumes_and_restarts(run_env: dict[str, Path]) -> None:
    store = State()
    first = [p for p in Checkpoint("p", max_pages=2, store=store)]
    second = [p for p in Checkpoint("p", max_pages=2, store=store)]
    assert (first, second) == ([1, 2], [3, 4])
    pages = Checkpoint("p", max_pages=10, store=store)
    for page in pages:
        if page == 6:
            break  # page 6 failed or was empty: not counted
    assert pages.pages_done == [5]
    assert pages.next_page == 6
    pages.finish()
    assert [p for p in Checkpoint("p", store=store)] == []
    assert next(iter(Checkpoint("p", store=store, restart=True))) == 1
    assert [p for p in Checkpoint("other", start=0, max_pages=1, store=store)] == [0]


def test_checkpoint_takes_max_pages_and_restart_from_the_args(
    run_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert list(checkpoint("q")) == [1, 2]  # max_pages=2 in PARSEQ_ARGS
    assert list(checkpoint("q")) == [3, 4]
    monkeypatch.setenv("PARSEQ_ARGS", json.dumps({"restart": True, "max-pages": 1}))
    assert list(checkpoint("q")) == [1]
    assert list(checkpoint("q")) == [2]  # the restart arg resets once per process


# --- fetch ---------------------------------------------------------------------------------


def _fetcher(**kwargs: Any) -> Fetcher:
    kwargs.setdefault("delay_s", 0)
    kwargs.setdefault("backoff_s", 0.05)
    return Fetcher(**kwargs)


def test_fetch_caches_pages_by_url_and_params(run_env: dict[str, Path], site: Any) -> None:
    fetch = _fetcher()
    url = site.url("/search")
    first = fetch(url, params={"q": "love", "page": 1})
    again = fetch(url, params={"q": "love", "page": 1})
    other = fetch(url, params={"q": "love", "page": 2})
    assert site.hits["/search?q=love&page=1"] == 1
    assert site.hits["/search?q=love&page=2"] == 1
    assert (first.from_cache, again.from_cache, other.from_cache) == (False, True, False)
    assert again.text == first.text and "Quote 1 on page 1 about love" in again.text
    assert again.status == 200 and again.headers["content-type"].startswith("text/html")
    assert (run_env["state"] / "cache").is_dir()
    # A new process (a new Fetcher) reads the same cache; max_age=0 always refetches.
    assert _fetcher()(url, params={"q": "love", "page": 1}).from_cache
    assert not _fetcher()(url, params={"q": "love", "page": 1}, max_age=0).from_cache
    assert not _fetcher()(url, params={"q": "love", "page": 1}, cache=False).from_cache
    assert site.hits["/search?q=love&page=1"] == 3


def test_fetch_retries_5xx_then_succeeds(run_env: dict[str, Path], site: Any) -> None:
    site.script("/flaky", [500, 503])
    response = _fetcher()(site.url("/flaky"))
    assert response.status == 200 and "Parsing" in response.text
    assert site.hits["/flaky"] == 3


def test_fetch_gives_up_after_the_retries_naming_the_url(
    run_env: dict[str, Path], site: Any
) -> None:
    site.script("/flaky", [502] * 5)
    with pytest.raises(FetchError) as err:
        _fetcher(retries=2)(site.url("/flaky"))
    assert str(err.value) == (
        f"GET {site.url('/flaky')} failed: HTTP 502 Bad Gateway (gave up after 3 attempts)"
    )
    assert site.hits["/flaky"] == 3


def test_fetch_4xx_fails_at_once_naming_the_url(run_env: dict[str, Path], site: Any) -> None:
    with pytest.raises(FetchError) as err:
        _fetcher()(site.url("/missing"), params={"a": 1})
    assert err.value.status == 404
    assert str(err.value) == f"GET {site.url('/missing?a=1')} failed: HTTP 404 Not Found"
    assert site.hits["/missing?a=1"] == 1
    assert not any((run_env["state"] / "cache").rglob("*.json"))  # errors are not cached


def test_fetch_retries_timeouts(run_env: dict[str, Path], site: Any) -> None:
    with pytest.raises(FetchError, match=r"/slow\?s=1 failed: .*gave up after 2 attempts"):
        _fetcher(retries=1, timeout_s=0.2)(site.url("/slow"), params={"s": 1})


def test_fetch_waits_politely_between_requests_to_a_host(
    run_env: dict[str, Path], site: Any
) -> None:
    fetch = _fetcher(delay_s=0.3)
    started = time.monotonic()
    for page in (1, 2, 3):
        fetch(site.url("/search"), params={"q": "love", "page": page})
    fetch(site.url("/search"), params={"q": "love", "page": 1})  # cached: no wait
    assert time.monotonic() - started >= 0.6


# --- the SDK in parser processes -----------------------------------------------------------


def test_install_sdk_makes_a_folder_with_only_the_sdk(tmp_path: Path) -> None:
    first = sdk.install_sdk(tmp_path / "sdk")
    assert sdk.install_sdk(tmp_path / "sdk") == first
    assert [p.name for p in first.iterdir()] == ["parseq_sdk"]
    assert (first / "parseq_sdk" / "__init__.py").is_file()
    assert [p.name for p in (tmp_path / "sdk").iterdir()] == [first.name]  # no staging left


def test_sdk_imports_nothing_of_parseq_in_a_bare_python(tmp_path: Path) -> None:
    """With ``-S`` (no site-packages) the interpreter has only the standard library."""
    code = (
        "import sys, parseq_sdk; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'parseq', 'sqlalchemy'}))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(sdk.install_sdk(tmp_path / "sdk"))},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


LOCAL_SCRIPT = """
from parseq_sdk import checkpoint, context, fetch, output, progress, save_file, state

fetch.delay_s = 0
state["runs"] = state.get("runs", 0) + 1
for page in progress(checkpoint(), message="pages"):
    text = fetch(context.args.str("base_url"), params={"page": page}).text
    output(f"page {page}: {len(text)} bytes")
save_file("meta.json", {"parser": context.parser, "under_parseq": context.under_parseq,
                        "runs": state["runs"], "run_id": context.run_id})
"""


def test_local_mode_uses_a_parseq_folder_and_argv(tmp_path: Path, site: Any) -> None:
    script = tmp_path / "my_parser.py"
    script.write_text(LOCAL_SCRIPT)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), "--base_url", site.url("/search"), *argv],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )

    first = run("--max-pages", "2")
    assert first.returncode == 0, first.stderr
    assert "[progress] 2/2 pages" in first.stderr
    local = tmp_path / ".parseq" / "my_parser"
    out = local / "output"
    assert [line.split(":")[0] for line in (out / "output.txt").read_text().splitlines()] == [
        "page 1",
        "page 2",
    ]
    assert first.stdout == (out / "output.txt").read_text()  # echoed while authoring
    second = run("--max-pages", "1")
    assert second.returncode == 0, second.stderr
    # Each local run starts output.txt afresh; state and the checkpoint carry over.
    assert (out / "output.txt").read_text().startswith("page 3:")
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"parser": "my_parser", "under_parseq": False, "runs": 2, "run_id": None}
    assert json.loads((local / "progress.json").read_text())["done"] == 1
    restarted = run("--max-pages", "1", "--restart")
    assert (out / "output.txt").read_text().startswith("page 1:"), restarted.stderr
    assert site.hits_for("/search?page=1") == 1  # the page cache in .parseq/my_parser/state


@pytest.mark.services
def test_a_parseq_worker_process_ships_the_sdk_to_its_parsers(
    services_app: Any, worker_process: Any, services_env: dict[str, str]
) -> None:
    client = api_client(services_app)
    with services_app.app_context():
        name = f"probe-{uuid.uuid4().hex[:8]}"
        add_parser(name, "sdk_probe.py", secrets={"API_TOKEN": "s3cret-token"})
    resp = client.post(f"/api/v1/parsers/{name}/runs", json={"args": {"who": "sdk"}})
    with services_app.app_context():
        wait_for_run(resp.json["id"])
    run = client.get(f"/api/v1/runs/{resp.json['id']}").json
    assert run["status"] == "completed", run["error"]
    assert run["progress"] == {"done": 3.0, "total": 3.0, "message": "probing"}
    probe = json.loads(client.get(f"/api/v1/runs/{run['id']}/files/probe.json").data)
    sdk_dir = Path(services_env["PARSEQ_VAR_DIR"]) / "sdk"
    assert probe == {
        "app_modules": [],
        "sdk_file": probe["sdk_file"],
        "secrets": "Secrets(API_TOKEN='***')",
        "token_ok": True,
        "run_id": run["id"],
        "parser": name,
        "under_parseq": True,
    }
    assert Path(probe["sdk_file"]).parent.parent.parent == sdk_dir
    assert client.get(f"/api/v1/runs/{run['id']}/files/output.txt").data == b"hello sdk\n"
    assert b"s3cret" not in client.get(f"/api/v1/runs/{run['id']}/files/run.log").data
