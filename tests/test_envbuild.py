"""Building one env (``parseq.envs.envbuild``): which installer runs, and what it is given.

Real builds with virtualenv and uv (or pip) from PyPI, of tiny pure-Python wheels.
"""

from __future__ import annotations

import pytest

from parseq.core.config import Config
from parseq.envs import cache as envs
from parseq.envs import envbuild


def test_base_env_for_parsers_without_requirements_runs_no_installer(env_config: Config) -> None:
    with envs.acquire(env_config, []) as env:
        assert env.built
        assert not (env.path / envbuild.REQUIREMENTS_FILE).exists()
        assert "pip install" not in (env.path / envs.BUILD_LOG).read_text()
        assert [b["installer"] for b in envs.builds(env_config, env.key)] == ["none"]


def test_pip_fallback_when_uv_is_missing(
    env_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(envbuild, "find_uv", lambda: None)
    with envs.acquire(env_config, ["six==1.15.0"]) as env:
        text = (env.path / envs.BUILD_LOG).read_text()
        assert "uv not found: falling back to pip" in text
        assert "-m pip install" in text
        assert envs.builds(env_config, env.key)[0]["installer"] == "pip"
