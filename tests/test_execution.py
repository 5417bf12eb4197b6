"""The worker's side of a run (``parseq.worker.execution``): where a parser's state lives."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from parseq.core.config import Config
from parseq.db.models import Parser, RunStatus, db
from parseq.envs import cache as envs
from parseq.worker import execution, launch, watchdog
from tests.conftest import running

COUNTER = (
    "import os, pathlib\n"
    "seen = pathlib.Path(os.environ['PARSEQ_STATE_DIR'], 'runs.txt')\n"
    "count = int(seen.read_text()) + 1 if seen.exists() else 1\n"
    "seen.write_text(str(count))\n"
    "pathlib.Path(os.environ['PARSEQ_OUTPUT_DIR'], 'output.txt').write_text(f'{count}\\n')\n"
)


def test_state_dir_is_named_by_id_and_takes_over_the_old_folder_named_after_the_parser(
    tmp_path: Path,
) -> None:
    config = Config(var_dir=tmp_path / "var").resolved()
    old = config.legacy_state_dir / "quotes"
    old.mkdir(parents=True)
    (old / "state.json").write_text('{"cursor": 3}')
    parser = Parser(id=7, name="quotes", path="quotes.py")

    path = launch.state_dir_for(config, parser)
    assert path == config.state_dir / "7"
    assert (path / "state.json").read_text() == '{"cursor": 3}'
    assert not old.exists()
    # A folder by the old name that turns up later is left alone: the state by id wins.
    old.mkdir()
    assert launch.state_dir_for(config, parser) == path
    assert (path / "state.json").exists() and old.exists()


def test_a_renamed_parser_keeps_its_state(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    parsers = tmp_path / "parsers"
    parsers.mkdir(mode=0o755)
    (parsers / "counter.py").write_text(COUNTER)
    (parsers / "counter.py").chmod(0o644)
    with running(make_config(parsers_dir=parsers)) as app:
        parser = Parser(name="counter", path="counter.py")
        db.session.add(parser)
        db.session.commit()
        outputs = []
        for new_name in ("counter", "renamed", "renamed-again"):
            parser.name = new_name
            db.session.commit()
            run = execution.run_now(parser)
            assert run.status is RunStatus.COMPLETED, run.error
            storage = app.extensions["parseq"].storage
            key = run.file("output.txt").storage_key
            outputs.append(b"".join(storage.iter_bytes(key)).decode().strip())
        assert outputs == ["1", "2", "3"]


def test_the_heartbeat_goes_on_while_the_env_builds_and_a_cached_env_needs_none(
    make_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    beat = threading.Event()
    real_beat, real_build = watchdog.beat, envs.build_env
    beats_while_building = []

    def beat_and_tell(watchdogs: list[watchdog.Watchdog]) -> None:
        real_beat(watchdogs)
        beat.set()

    def slow_build(*args: object, **kwargs: object) -> bool:
        beats_while_building.append(beat.wait(timeout=30))
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    started = []
    real_init = watchdog.Watchdog.__init__

    def count_init(self: watchdog.Watchdog, *args: object, **kwargs: object) -> None:
        started.append(self)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(watchdog, "beat", beat_and_tell)
    monkeypatch.setattr(watchdog.Watchdog, "__init__", count_init)
    monkeypatch.setattr(envs, "build_env", slow_build)
    config = make_config(envs_dir=tmp_path / "envs", heartbeat_interval_s=0.1)
    with running(config):
        parser = Parser(name="echo", path="echo_env.py")
        db.session.add(parser)
        db.session.commit()
        first = execution.run_now(parser)
        assert first.status is RunStatus.COMPLETED, first.error
        assert beats_while_building == [True]
        watchdogs_of_a_build = len(started)
        started.clear()
        again = execution.run_now(parser)
        assert again.status is RunStatus.COMPLETED, again.error
        assert beats_while_building == [True]  # no second build
        # The env's lookup starts no watchdog of its own: only the run's is left.
        assert len(started) == watchdogs_of_a_build - 1
