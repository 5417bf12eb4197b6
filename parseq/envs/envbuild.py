"""Building one parser virtualenv: virtualenv, then uv (or pip) installing its requirements.

The builder writes into a folder it is given and keeps one build log; the env cache
(:mod:`parseq.envs`) picks the folder, holds the build lock, renames the result into place
and records the build. A failed build raises :class:`EnvBuildFailed` naming the requirement
the installer's error points at.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess  # nosec B404  # uv builds the envs: a child process by design
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from parseq.envs import requirements as reqs
from parseq.core.config import Config
from parseq.core.errors import RunFailed

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = "parseq-requirements.txt"


class EnvBuildFailed(RunFailed):
    """Building a parser's env failed; carries the key, the failing requirement and the log."""

    code = "env_build_failed"

    def __init__(self, message: str, key: str, requirement: str | None, build_log: str) -> None:
        super().__init__(message, tail=build_log[-2000:])
        self.key = key
        self.requirement = requirement
        self.build_log = build_log


class Builder:
    """Runs virtualenv (on the base Python ``python``) and the installer into ``tmp``,
    collecting one build log."""

    def __init__(self, config: Config, key: str, tmp: Path, python: str) -> None:
        self.config = config
        self.key = key
        self.tmp = tmp
        self.python = python
        self.installer = "none"
        self.chunks: list[str] = []
        self.deadline = time.monotonic() + config.env_build_timeout_s

    def text(self) -> str:
        return "".join(self.chunks)

    def note(self, line: str) -> None:
        self.chunks.append(f"[parseq] {line}\n")

    def build(self, lines: list[str], extra: list[str]) -> None:
        wanted = lines + extra
        uv = find_uv() if wanted and self.config.env_installer != "pip" else None
        if wanted:
            self.installer = "uv" if uv else "pip"
            if uv is None and self.config.env_installer == "auto":
                self.note("uv not found: falling back to pip (much slower)")
                log.warning("env %s: uv not found, installing with pip (much slower)", self.key)
            elif uv is None and self.config.env_installer == "uv":
                self._fail(lines, "PARSEQ_ENV_INSTALLER=uv but uv is not installed")
        seed = [] if self.installer == "pip" else ["--no-seed"]
        venv = [sys.executable, "-m", "virtualenv", "--no-download", "--no-periodic-update"]
        self.run([*venv, *seed, "--prompt", self.key[:12], "-p", self.python, str(self.tmp)], lines)
        if not wanted:
            return
        req_file = self.tmp / REQUIREMENTS_FILE
        req_file.write_text("".join(f"{line}\n" for line in wanted))
        python = str(self.tmp / "bin" / "python")
        if uv:
            cmd = [uv, "pip", "install", "--python", python, "--color", "never"]
        else:
            cmd = [python, "-m", "pip", "install", "--no-input", "--no-color"]
        if any(reqs.HASH_OPTION in line for line in wanted):
            cmd.append("--require-hashes")  # pip turns it on by itself, uv only checks given ones
        self.run([*cmd, "-r", str(req_file)], lines)

    def run(self, cmd: list[str], lines: list[str]) -> None:
        self.note("$ " + " ".join(cmd))
        env = {**self.config.installer_env, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("VIRTUAL_ENV", None)
        try:
            # cmd is a list (no shell): uv's path and a requirements file Parseq wrote.
            proc = subprocess.run(  # nosec B603  # see above
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=max(self.deadline - time.monotonic(), 1),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self.chunks.append((exc.output or b"").decode("utf-8", "replace"))
            limit = self.config.env_build_timeout_s
            self._fail(lines, f"timed out after {limit:g} s")
        self.chunks.append(proc.stdout.decode("utf-8", "replace"))
        if proc.returncode != 0:
            self._fail(lines, f"{Path(cmd[0]).name} exited with code {proc.returncode}")

    def _fail(self, lines: list[str], why: str) -> None:
        text = self.text()
        culprit = failing_requirement(lines, text)
        what = f"requirement {culprit!r}" if culprit else f"requirements {', '.join(lines)}"
        tail = text[-self.config.error_tail_bytes :].strip()
        message = f"could not build the environment for {what}: {why}\n{tail}"
        self.note(why)
        raise EnvBuildFailed(message, self.key, culprit, self.text())


def failing_requirement(lines: Sequence[str], build_log: str) -> str | None:
    """The requirement an installer's error names, looked for after its first error line."""
    lower = build_log.lower()
    marks = ("error", "\u00d7")  # uv marks its errors with a multiplication sign
    starts = [i for i in map(lower.find, marks) if i >= 0]
    section = lower[min(starts) :] if starts else lower
    for line in lines:
        name = reqs.name_of(line)
        if name and any(v in section for v in {name, name.replace("-", "_")}):
            return line
    return None


def find_uv() -> str | None:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def relocate(tmp: Path, final: Path) -> None:
    """virtualenv and installers write the env's absolute path into scripts and ``.pth``
    files; point them at the final path before the rename moves the env there."""
    old, new = str(tmp).encode(), str(final).encode()
    candidates = [*(tmp / "bin").iterdir(), *tmp.glob("lib/python*/site-packages/*.pth")]
    for path in candidates:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))


def make_readable(root: Path) -> None:
    """Envs are shared, possibly with an unprivileged parser user: 0755 dirs, o+r files."""
    for dirpath, _dirs, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # nosec B103  # envs hold no secrets; parsers must read them
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
