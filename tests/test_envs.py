"""Per-parser virtualenvs: real builds with virtualenv + uv from PyPI, run through workers.

Packages are tiny pure-Python wheels (``six``, ``idna``) so builds take well under a second
with uv's cache warm; Parseq's own venv has six 1.17.0, so 1.15.0/1.16.0 prove isolation.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from parseq.core.config import Config
from parseq.core.errors import ValidationError
from parseq.db.models import Parser, ParserKind, RunStatus, db
from parseq.envs import cache as envs
from parseq.envs import requirements as reqs
from parseq.sandbox import limits as sandbox
from parseq.services import registry, runs
from tests.conftest import (
    FIXTURE_PARSERS,
    INSTALLER_ENV,
    PARSER_PYTHON,
    add_parser,
    admin_client,
    api_client,
    running,
    wait_for_run,
)

SIX_SCRIPT = (FIXTURE_PARSERS / "six_version.py").read_text()
MISSING = f"parseq-no-such-package-{uuid.uuid4().hex[:8]}"


# --- requirements: parsing, normalization, sources -------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "six==1.16.0\nidna>=3",
        "idna>=3\nsix==1.16.0\n",
        "  IDNA >= 3  \n# a comment\n\nSix == 1.16.0  # pinned\nsix==1.16.0",
    ],
)
def test_same_requirements_written_differently_normalize_to_one_key(text: str) -> None:
    assert reqs.parse(text) == ("idna>=3", "six==1.16.0")
    assert envs.env_key(reqs.parse(text)) == envs.env_key(("six==1.16.0", "idna>=3"))


def test_different_requirements_or_extra_lines_change_the_key() -> None:
    assert envs.env_key(["six==1.16.0"]) != envs.env_key(["six==1.15.0"])
    assert envs.env_key(["six==1.16.0"]) != envs.env_key(["six==1.16.0"], extra=["sdk"])
    assert envs.env_key([]) == envs.env_key(())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("six==1.16.0\nnot a requirement!!", "requirements line 2: 'not a requirement!!'"),
        ("six>=>1", "is not a valid requirement"),
        ("-e ./mypkg", "option '-e' is not allowed"),
        ("-r other.txt", "option '-r' is not allowed"),
        ("--find-links /tmp", "option '--find-links' is not allowed"),
        ("--index-url https://evil.example/simple", "index 'https://evil.example/simple'"),
        ("pkg @ file:///tmp/pkg", "installs from a URL or path"),
        ("pkg @ https://example.com/pkg.whl", "installs from a URL or path"),
    ],
)
def test_bad_or_unsafe_requirements_are_validation_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        reqs.parse(text)
    assert message in err.value.message
    assert err.value.field == "requirements"


def test_admin_settings_allow_indexes_and_unsafe_options() -> None:
    index = reqs.Policy(allowed_index_urls=frozenset({"https://pypi.example/simple"}))
    assert reqs.parse("-i https://pypi.example/simple/\nsix", index) == (
        "--index-url https://pypi.example/simple/",
        "six",
    )
    unsafe = reqs.Policy(allow_unsafe=True)
    assert reqs.parse("-e  ./mypkg\npkg @ file:///tmp/pkg", unsafe) == (
        "-e ./mypkg",
        "pkg @ file:///tmp/pkg",
    )


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PEP723 = """# /// script
# requires-python = ">=3.10"
# dependencies = [
#   "IDNA==3.7",
#   "six==1.16.0",
# ]
# ///
"""


def test_requirement_sources_and_their_precedence(tmp_path: Path, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(parsers_dir=tmp_path / "parsers")
    inline = _write(config.parsers_dir / "inline.py", PEP723 + "print(1)\n")
    folder = _write(config.parsers_dir / "folder" / "main.py", PEP723)
    _write(config.parsers_dir / "folder" / "requirements.txt", "six==1.15.0\n")
    plain = _write(config.parsers_dir / "plain.py", "print(1)\n")
    _write(config.parsers_dir / "requirements.txt", "six==1.15.0\n")  # not beside a folder parser

    def of(script: Path, field: str = "") -> reqs.Requirements:
        return registry.requirements_for(
            config,
            Parser(name="x", path="x.py", kind=ParserKind.SCRIPT, requirements=field),
            script,
        )

    assert of(inline) == reqs.Requirements(("idna==3.7", "six==1.16.0"), "pep723")
    assert of(folder) == reqs.Requirements(("six==1.15.0",), "requirements.txt")
    assert of(folder, "Six==1.17.0") == reqs.Requirements(("six==1.17.0",), "parser")
    assert of(plain) == reqs.Requirements((), "none")
    bad = _write(config.parsers_dir / "bad.py", PEP723.replace('"six==1.16.0"', '"six=>1"'))
    with pytest.raises(ValidationError, match="PEP 723 dependency line 2"):
        of(bad)


def test_pep723_in_a_notebook_code_cell(tmp_path: Path) -> None:
    nb = {"cells": [{"cell_type": "code", "source": PEP723.splitlines(keepends=True)}]}
    path = _write(tmp_path / "nb.ipynb", json.dumps(nb))
    assert reqs.inline_dependencies(path) == ["IDNA==3.7", "six==1.16.0"]


def test_admin_refuses_garbage_requirements(sqlite_app: Flask) -> None:
    client = admin_client(sqlite_app)
    form = {
        "name": "bad",
        "script": "script:echo_env.py",
        "default_args": "{}",
        "max_retries": "0",
        "csrf_token": client.csrf_token,
    }
    resp = client.post("/admin/parsers/new/", data={**form, "requirements": "six>=>1"})
    assert resp.status_code == 200
    assert "is not a valid requirement" in resp.get_data(as_text=True)
    assert db.session.execute(db.select(Parser).filter_by(name="bad")).first() is None
    resp = client.post("/admin/parsers/new/", data={**form, "requirements": "six==1.16.0"})
    assert resp.status_code == 302
    assert runs.get_parser("bad").requirements == "six==1.16.0"


# --- building and caching ---------------------------------------------------------------------


def test_build_is_relocated_readable_and_reused_without_an_installer(env_config: Config) -> None:
    with envs.acquire(env_config, ["six==1.16.0"]) as env:
        assert env.built
        assert env.python.is_absolute()
        assert env.python == env_config.envs_dir / env.key / "bin" / "python"
        out = subprocess.run([env.python, "-c", "import six; print(six.__version__)"], check=True,
                             capture_output=True, text=True)  # fmt: skip
        assert out.stdout.strip() == "1.16.0"
        assert ".tmp" not in (env.path / "bin" / "activate").read_text()
        assert (env.path.stat().st_mode & 0o777) == 0o755
        meta = json.loads((env.path / envs.META_FILE).read_text())
        assert meta["requirements"] == ["six==1.16.0"] and meta["installer"] == "uv"
        assert "uv pip install" in (env.path / envs.BUILD_LOG).read_text()
    with envs.acquire(env_config, ["six==1.16.0"]) as again:
        assert (again.key, again.built) == (env.key, False)
    assert [b["ok"] for b in envs.builds(env_config, env.key)] == [True]


def test_a_half_built_env_is_never_used(env_config: Config) -> None:
    key = envs.env_key(["six==1.16.0"], python=PARSER_PYTHON)
    crashed = _write(env_config.envs_dir / ".tmp" / f"{key}.crashed" / "bin" / "python", "")
    with envs.acquire(env_config, ["six==1.16.0"]) as env:
        assert env.built  # built afresh: the crashed build's leftovers were not taken
        assert not crashed.exists()


def test_threads_asking_for_one_new_env_build_it_once(env_config: Config) -> None:
    got: list[envs.Env] = []
    barrier = threading.Barrier(4)

    def ask() -> None:
        barrier.wait()
        got.append(envs.acquire(env_config, ["idna==3.7"]))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 4 and len({e.key for e in got}) == 1
    assert sum(e.built for e in got) == 1
    assert len(envs.builds(env_config, got[0].key)) == 1
    for env in got:
        env.release()


ACQUIRE = """
import sys
from parseq.envs import cache as envs
from parseq.core.config import Config
from parseq.sandbox.limits import base_python
config = Config.from_env(envs_dir=sys.argv[1])
with envs.acquire(config, ["idna==3.6"], python=base_python(config)) as env:
    print(env.key, env.built)
"""


def test_processes_asking_for_one_new_env_build_it_once(env_config: Config) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ACQUIRE, str(env_config.envs_dir)],
            env=INSTALLER_ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=60)[0].split() for p in procs)
    python = sandbox.parser_python(Config.from_env(environ=INSTALLER_ENV))
    key = envs.env_key(["idna==3.6"], python=python)
    assert outputs == [[key, "False"], [key, "True"]]
    assert len(envs.builds(env_config, key)) == 1


def _fake_env(config: Config, key: str, mtime: float) -> None:
    _write(config.envs_dir / key / envs.META_FILE, json.dumps({"size_bytes": 1000}))
    lease = config.envs_dir / ".locks" / f"{key}.use"
    _write(lease, "")
    os.utime(lease, (mtime, mtime))


def test_eviction_removes_least_recently_used_but_never_one_in_use(env_config: Config) -> None:
    for i, key in enumerate(["old", "older", "oldest", "newest"]):
        _fake_env(env_config, key, {0: 300, 1: 200, 2: 100, 3: 400}[i])
    with open(env_config.envs_dir / ".locks" / "oldest.use") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # a run is using the oldest env
        assert envs.prune(env_config, max_count=2, max_bytes=None) == ["older"]
    assert [e.key for e in envs.list_envs(env_config)] == ["newest", "old", "oldest"]
    assert envs.prune(env_config, max_count=None, max_bytes=2500) == ["oldest"]
    assert envs.prune(env_config, max_count=0, max_bytes=None) == ["newest", "old"]
    assert envs.list_envs(env_config) == []


# --- through a worker -------------------------------------------------------------------------


@pytest.fixture
def env_app(env_config: Config) -> Iterator[Flask]:
    """The embedded default (in-memory broker, 2 worker threads) with this test's own envs."""
    with running(env_config) as app:
        yield app


def _six_parser(config: Config, name: str, requirements: str = "") -> Parser:
    _write(config.parsers_dir / "six_version.py", SIX_SCRIPT)
    return add_parser(name, "six_version.py", requirements=requirements)


def _output(app: Flask, run_id: int) -> str:
    return api_client(app).get(f"/api/v1/runs/{run_id}/files/output.txt").get_data(as_text=True)


def test_two_parsers_import_their_own_versions_in_one_worker(
    env_app: Flask, env_config: Config
) -> None:
    old = _six_parser(env_config, "old", "six==1.15.0")
    new = _six_parser(env_config, "new", "six==1.16.0")
    same = _six_parser(env_config, "same", " SIX == 1.16.0 \n# the same, written differently")
    done = {p.name: runs.create_run(p) for p in (old, new, same)}
    done = {name: wait_for_run(run.id) for name, run in done.items()}
    for run in done.values():
        assert run.status is RunStatus.COMPLETED, run.error
    assert _output(env_app, done["old"].id).startswith("1.15.0 ")
    assert _output(env_app, done["new"].id).startswith("1.16.0 ")
    assert done["old"].worker_id == done["new"].worker_id
    assert done["new"].env_key == done["same"].env_key != done["old"].env_key
    prefix = _output(env_app, done["new"].id).split()[1]
    assert prefix == str(env_config.envs_dir / done["new"].env_key)
    assert api_client(env_app).get(f"/api/v1/runs/{done['old'].id}").json["env_key"] == (
        done["old"].env_key
    )

    again = wait_for_run(runs.create_run(new).id)
    assert again.status is RunStatus.COMPLETED
    assert again.env_key == done["new"].env_key
    # One build per requirement set, however many runs used it: the second run installed nothing.
    assert len(envs.builds(env_config, again.env_key)) == 1
    assert len(envs.builds(env_config)) == 2

    bare = wait_for_run(runs.create_run(_six_parser(env_config, "bare")).id)
    assert bare.status is RunStatus.ERROR  # the base env does not see Parseq's own six
    assert "No module named 'six'" in bare.error


def test_concurrent_runs_needing_one_new_env_build_it_once(
    env_app: Flask, env_config: Config
) -> None:
    first = _six_parser(env_config, "first", "six==1.16.0\nidna==3.7")
    second = _six_parser(env_config, "second", "idna==3.7\nsix==1.16.0")
    started = [runs.create_run(first), runs.create_run(second)]
    done = [wait_for_run(run.id) for run in started]
    assert [r.status for r in done] == [RunStatus.COMPLETED] * 2, [r.error for r in done]
    assert done[0].env_key == done[1].env_key
    assert len(envs.builds(env_config, done[0].env_key)) == 1


def test_unknown_package_errors_clearly_and_a_fixed_requirement_succeeds(
    env_app: Flask, env_config: Config
) -> None:
    parser = _six_parser(env_config, "typo", f"six==1.16.0\n{MISSING}==1.0")
    run = wait_for_run(runs.create_run(parser).id)
    assert run.status is RunStatus.ERROR
    assert run.error.startswith(f"could not build the environment for requirement '{MISSING}==1.0'")
    assert "uv exited with code" in run.error and MISSING in run.error.splitlines()[-1]
    assert run.env_key == envs.env_key(["six==1.16.0", f"{MISSING}==1.0"], python=PARSER_PYTHON)
    assert MISSING in _output_file(env_app, run.id, "env-build.log")
    assert not (env_config.envs_dir / run.env_key).exists()  # the failure is not cached

    again = wait_for_run(runs.create_run(parser).id)
    assert again.status is RunStatus.ERROR  # retried, not remembered
    assert [b["ok"] for b in envs.builds(env_config, run.env_key)] == [False, False]

    parser.requirements = "six==1.16.0"
    db.session.commit()
    fixed = wait_for_run(runs.create_run(parser).id)
    assert fixed.status is RunStatus.COMPLETED, fixed.error
    assert _output(env_app, fixed.id).startswith("1.16.0 ")


def test_invalid_requirements_saved_behind_the_admins_back_fail_the_run_not_the_worker(
    env_app: Flask, env_config: Config
) -> None:
    parser = _six_parser(env_config, "garbage", "six>=>1")
    run = wait_for_run(runs.create_run(parser).id)
    assert run.status is RunStatus.ERROR
    assert run.error.startswith("requirements line 1: 'six>=>1' is not a valid requirement")
    assert envs.builds(env_config) == []
    parser.requirements = "six==1.16.0"
    db.session.commit()
    assert wait_for_run(runs.create_run(parser).id).status is RunStatus.COMPLETED


def _output_file(app: Flask, run_id: int, name: str) -> str:
    resp = api_client(app).get(f"/api/v1/runs/{run_id}/files/{name}")
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


def test_pep723_metadata_is_honoured(env_app: Flask, env_config: Config) -> None:
    script = (
        PEP723
        + "import os, pathlib, idna, six\n"
        + (
            "pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'], 'output.txt')"
            ".write_text(idna.__version__ + ' ' + six.__version__)\n"
        )
    )
    _write(env_config.parsers_dir / "inline" / "main.py", script)
    run = wait_for_run(runs.create_run(add_parser("inline", "inline/main.py")).id)
    assert run.status is RunStatus.COMPLETED, run.error
    assert _output(env_app, run.id) == "3.7 1.16.0"
    assert run.env_key == envs.env_key(["idna==3.7", "six==1.16.0"], python=PARSER_PYTHON)


# --- on real services and from the CLI --------------------------------------------------------


@pytest.mark.services
def test_worker_process_builds_once_for_concurrent_runs(
    services_app: Flask, worker_process
) -> None:  # type: ignore[no-untyped-def]
    config = services_app.extensions["parseq"].config
    with services_app.app_context():
        tag = uuid.uuid4().hex[:8]
        a = add_parser(f"six-a-{tag}", "six_version.py", requirements="six==1.15.0")
        b = add_parser(f"six-b-{tag}", "six_version.py", requirements="Six==1.15.0")
        done = [wait_for_run(runs.create_run(p).id, timeout_s=60) for p in (a, b)]
        assert [r.status for r in done] == [RunStatus.COMPLETED] * 2, [r.error for r in done]
        assert done[0].env_key == done[1].env_key
        assert {r.worker_id.split(":")[1] for r in done} == {str(worker_process.pid)}
        body = api_client(services_app).get(f"/api/v1/runs/{done[0].id}").json
    assert body["env_key"] == done[0].env_key
    assert len(envs.builds(config, done[0].env_key)) == 1
    python = sandbox.base_python(config)  # as the worker builds
    with envs.acquire(config, ["six==1.15.0"], python=python) as env:  # sees the worker's env
        assert not env.built


def _parseq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parseq.cli", *args], env=env, capture_output=True, text=True
    )


def test_envs_cli_build_list_prune(tmp_path: Path) -> None:
    env = {
        **INSTALLER_ENV,
        "PARSEQ_VAR_DIR": str(tmp_path / "var"),
        "PARSEQ_ENVS_DIR": str(tmp_path / "envs"),
        "PARSEQ_PARSERS_DIR": str(_write(tmp_path / "parsers" / "p.py", PEP723).parent),
        "PARSEQ_LOG_LEVEL": "WARNING",
    }
    built = _parseq("envs", "build", "p", env=env)
    assert built.returncode == 0, built.stderr
    # The start-up sync stored the script as a code version with its requirements locked
    # (#21): the env is built from the lock, pinned and hash-checked.
    key = built.stdout.split()[0]
    assert built.stdout.startswith(f"{key} built (lock: idna==3.7 --hash=sha256:")
    assert "six==1.16.0 --hash=sha256:" in built.stdout
    assert _parseq("envs", "build", "p", env=env).stdout.startswith(f"{key} cached")
    listed = _parseq("envs", "list", env=env)
    assert key in listed.stdout and "1 env(s)" in listed.stdout
    unknown = _parseq("envs", "build", "nope", env=env)
    assert (unknown.returncode, unknown.stderr) == (1, "parseq: error: no parser named 'nope'\n")
    pruned = _parseq("envs", "prune", "--all", env=env)
    assert f"removed {key}" in pruned.stdout and "0 left" in pruned.stdout


def test_cli_build_failure_is_one_line(tmp_path: Path) -> None:
    parsers = tmp_path / "parsers"
    _write(parsers / "p" / "main.py", "print(1)\n")
    _write(parsers / "p" / "requirements.txt", f"{MISSING}\n")
    env = {
        **INSTALLER_ENV,
        "PARSEQ_VAR_DIR": str(tmp_path / "var"),
        "PARSEQ_ENVS_DIR": str(tmp_path / "envs"),
        "PARSEQ_PARSERS_DIR": str(parsers),
        "PARSEQ_LOG_LEVEL": "WARNING",
    }
    result = _parseq("envs", "build", "p", env=env)
    assert result.returncode == 1
    # The start-up sync could not lock it either: one warning line, then the one-line error.
    warning, error = result.stderr.splitlines()
    assert "parser p: code not stored, runs its file: the requirements do not resolve" in warning
    assert error.startswith(
        f"parseq: error: could not build the environment for requirement '{MISSING}'"
    )
