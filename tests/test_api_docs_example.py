"""The typed client example of ``docs/api.md`` runs as written against ``parseq up``: it
registers a parser, runs it with ``?wait`` and downloads its files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import FIXTURE_PARSERS
from tests.test_admin_browser import server  # noqa: F401 (fixture: parseq up on a free port)

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def cli_token(tmp_path: Path, name: str) -> str:
    """A token made by ``parseq create-token`` in the server fixture's var/ (its database)."""
    env = {
        "PATH": os.environ["PATH"],
        "PARSEQ_VAR_DIR": str(tmp_path / "var"),
        "PARSEQ_PARSERS_DIR": str(FIXTURE_PARSERS),
        "PARSEQ_NOTEBOOKS_DIR": str(tmp_path / "notebooks"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "parseq.cli", "create-token", name],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_the_client_example_registers_runs_and_downloads(server: str, tmp_path: Path) -> None:  # noqa: F811
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(code) == 1
    script = tmp_path / "client.py"
    script.write_text(code[0])
    env = {
        "PATH": os.environ["PATH"],
        "PARSEQ_URL": server,
        "PARSEQ_TOKEN": cli_token(tmp_path, "docs-example"),
        "PARSER_PATH": "items.py",  # a fixture parser: JSON Lines in output.txt
        "OUT_DIR": str(tmp_path / "downloads"),
    }
    for _ in range(2):  # the second time, the parser exists: the example updates it
        done = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr
    saved = [Path(line.split(" ", 1)[1]) for line in done.stdout.splitlines()]
    output = next(p for p in saved if p.name == "output.txt")
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert lines == [{"id": i, "name": f"item {i}"} for i in range(3)]
