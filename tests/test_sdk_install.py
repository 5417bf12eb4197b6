"""The SDK installs on its own, as the README says: ``pip install ./parseq_sdk`` in a fresh
venv gives a working ``parseq_sdk`` and nothing of Parseq's server side."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import INSTALLER_ENV

REPO = Path(__file__).resolve().parent.parent


def test_pip_install_of_the_sdk_folder_in_a_fresh_venv(tmp_path: Path) -> None:
    # A copy, so the build's leftovers (build/, *.egg-info) stay out of the checkout.
    checkout = tmp_path / "checkout"
    shutil.copytree(
        REPO / "parseq_sdk",
        checkout / "parseq_sdk",
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"),
    )
    venv = tmp_path / "jupyter-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "./parseq_sdk"],
        cwd=checkout,
        env=INSTALLER_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr

    script = (
        "import importlib.util, os, pathlib, tempfile\n"
        "os.chdir(tempfile.mkdtemp())\n"
        "import parseq_sdk\n"
        "from parseq_sdk import context, output\n"
        "output('hello')\n"
        "print(parseq_sdk.__version__, context.under_parseq)\n"
        "print([p.read_text() for p in pathlib.Path('.parseq').rglob('output.txt')])\n"
        "print(importlib.util.find_spec('parseq'), importlib.util.find_spec('flask'))\n"
    )
    ran = subprocess.run(
        [str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    # Local mode (no Parseq around): the output goes under .parseq/ and is echoed.
    assert ran.stdout.splitlines() == ["hello", "0.1.0 False", "['hello\\n']", "None None"]
