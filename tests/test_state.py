"""Parser state shared through storage: workers on different machines (processes sharing only
PostgreSQL, RabbitMQ and S3) continue each other's checkpoints and page caches, take turns with
a parser's state, and the state can be reset over the API and in the admin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask

from parseq.core.config import Config
from parseq.db import state_leases as state_lease
from parseq.db.models import Run, RunStatus, db
from parseq.services import runs
from parseq.storage import state_sync
from parseq.web.app import create_app, init_db
from parseq.worker.execution import execute_run
from tests.conftest import (
    add_parser,
    admin_client,
    api_client,
    delete_rabbit_queues,
    start_worker_process,
    stop_process,
    traversable,
    wait_for_run,
)


def output_of(app: Flask, run: Run) -> str:
    storage = app.extensions["parseq"].storage
    return b"".join(storage.iter_bytes(run.file("output.txt").storage_key)).decode()


def stored_files(app: Flask, parser_id: int) -> dict[str, Any]:
    manifest = state_sync.read_manifest(app.extensions["parseq"].storage, parser_id)
    return manifest.files if manifest else {}


SECRETS_KEY = Fernet.generate_key().decode()


@dataclass
class Machine:
    """A worker process with a var/ and envs/ of its own, and a web app sending to its queue."""

    name: str
    env: dict[str, str]
    app: Flask
    proc: subprocess.Popen[bytes]

    def run(self, parser_name: str, args: dict[str, Any]) -> int:
        with self.app.app_context():
            return runs.create_run(runs.get_parser(parser_name), args).id


def start_machine(
    name: str, services_env: dict[str, str], services_app: Flask, tmp: Path, **settings: str
) -> Machine:
    del services_app  # the tables exist
    for sub in ("var", "envs"):
        (tmp / sub).mkdir(exist_ok=True)
    env = {
        **services_env,
        "PARSEQ_QUEUE_NAME": f"{services_env['PARSEQ_QUEUE_NAME']}_{name}_{uuid.uuid4().hex[:6]}",
        "PARSEQ_VAR_DIR": str(traversable(tmp / "var")),
        "PARSEQ_ENVS_DIR": str(traversable(tmp / "envs")),
        "PARSEQ_SECRETS_KEY": SECRETS_KEY,  # machines share it, as they must
        "PARSEQ_STATE_LEASE_TTL_S": "3",
        "PARSEQ_STATE_WAIT_S": "1",
        **settings,
    }
    proc = start_worker_process(env, tmp / "worker.log")
    return Machine(name, env, create_app(Config.from_env(environ=env)), proc)


def stop_machine(machine: Machine) -> None:
    if machine.proc.poll() is None:
        stop_process(machine.proc)
    with machine.app.app_context():
        db.engine.dispose()
    queue = machine.env["PARSEQ_QUEUE_NAME"]
    delete_rabbit_queues(queue, f"{queue}-notify")


@pytest.fixture(scope="module")
def machines(
    services_env: dict[str, str],
    services_app: Flask,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Machine, Machine]]:
    """Workers "A" and "B": nothing in common but PostgreSQL, RabbitMQ and S3."""
    a = start_machine("a", services_env, services_app, tmp_path_factory.mktemp("machine-a"))
    b = start_machine("b", services_env, services_app, tmp_path_factory.mktemp("machine-b"))
    yield a, b
    stop_machine(a)
    stop_machine(b)


def new_parser(app: Flask, prefix: str, **fields: Any) -> tuple[str, int]:
    with app.app_context():
        parser = add_parser(f"{prefix}-{uuid.uuid4().hex[:8]}", "state_pages.py", **fields)
        return parser.name, parser.id


def finished(app: Flask, run_id: int, timeout_s: float = 60) -> Run:
    with app.app_context():
        run = wait_for_run(run_id, timeout_s)
        run.files  # noqa: B018 (loaded while the context lasts)
        db.session.expunge(run)
        return run


@pytest.mark.services
def test_a_checkpoint_run_on_a_continues_on_b_from_as_cached_pages(
    machines: tuple[Machine, Machine], site: Any
) -> None:
    a, b = machines
    name, parser_id = new_parser(a.app, "pages")
    first = finished(a.app, a.run(name, {"base": site.base, "max_pages": 2}))
    assert first.status is RunStatus.COMPLETED, first.error
    assert output_of(a.app, first).split("\n")[:2] == ["page 1 net", "page 2 net"]
    assert [site.hits[f"/tag/love/page/{n}/"] for n in (1, 2, 3)] == [1, 1, 0]

    second = finished(b.app, b.run(name, {"base": site.base, "max_pages": 2, "refetch": 2}))
    assert second.status is RunStatus.COMPLETED, second.error
    assert output_of(b.app, second).split("\n")[:4] == [
        "page 1 cache",  # A's pages, from B's copy of the state
        "page 2 cache",
        "page 3 net",  # and B continues A's checkpoint
        "page 4 net",
    ]
    assert [site.hits[f"/tag/love/page/{n}/"] for n in (1, 2, 3, 4)] == [1, 1, 1, 1]
    on_b = Path(b.env["PARSEQ_VAR_DIR"]) / "parser-state" / str(parser_id)
    assert json.loads((on_b / "state.json").read_text())["checkpoint:pages"] == {"next": 5}
    assert "state.json" in stored_files(a.app, parser_id)


@pytest.mark.services
def test_concurrent_runs_on_a_and_b_keep_each_others_keys_and_the_waiting_one_says_so(
    machines: tuple[Machine, Machine],
) -> None:
    a, b = machines
    name, _ = new_parser(a.app, "keys")
    # A parser with state: its runs take turns (one without state need not: the next test).
    before = finished(a.app, a.run(name, {"mode": "key", "key": "before"}))
    assert before.status is RunStatus.COMPLETED, before.error
    first = a.run(name, {"mode": "key", "key": "from_a", "sleep": 3})
    with a.app.app_context():
        assert wait_for_run_status(first, RunStatus.RUNNING).status is RunStatus.RUNNING
    second = b.run(name, {"mode": "key", "key": "from_b"})
    messages = set()
    with b.app.app_context():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            db.session.expire_all()
            run = db.session.get(Run, second)
            messages.add((run.status, run.progress_message))
            if run.status.is_final:
                break
            time.sleep(0.1)
    waiting = {m for m in messages if m[1] and m[1].startswith("waiting for the parser's state")}
    assert waiting, messages
    assert any(f"held by run {first}" in m[1] for m in waiting)
    # The thread waited PARSEQ_STATE_WAIT_S, then the run went back to the queue meanwhile.
    assert RunStatus.PENDING in {m[0] for m in waiting}
    runs_done = [finished(a.app, first), finished(b.app, second)]
    assert [r.status for r in runs_done] == [RunStatus.COMPLETED] * 2, [r.error for r in runs_done]
    assert runs_done[1].progress_message is None  # no longer waiting
    show = finished(a.app, a.run(name, {"mode": "show"}))
    expected = {"before": before.id, "from_a": first, "from_b": second}
    assert json.loads(output_of(a.app, show)) == expected


@pytest.mark.services
def test_runs_of_a_parser_without_state_do_not_wait_and_keep_each_others_first_keys(
    machines: tuple[Machine, Machine],
) -> None:
    a, b = machines
    name, parser_id = new_parser(a.app, "fresh")
    first = a.run(name, {"mode": "key", "key": "from_a", "sleep": 2})
    second = b.run(name, {"mode": "key", "key": "from_b", "sleep": 2})
    done = [finished(a.app, first), finished(b.app, second)]
    assert [r.status for r in done] == [RunStatus.COMPLETED] * 2, [r.error for r in done]
    # They ran side by side (neither waited for the other's state)...
    assert done[0].started_at < done[1].finished_at and done[1].started_at < done[0].finished_at
    # ...and both made a state.json: merged key by key at the second commit.
    show = finished(a.app, a.run(name, {"mode": "show"}))
    assert json.loads(output_of(a.app, show)) == {"from_a": first, "from_b": second}
    with a.app.app_context():
        assert state_lease.peek(db.engine, parser_id).stateful


@pytest.mark.services
def test_a_run_killed_mid_way_leaves_consistent_state(
    machines: tuple[Machine, Machine],
) -> None:
    a, b = machines
    name, parser_id = new_parser(a.app, "killed", timeout_s=2.0)
    killed = finished(a.app, a.run(name, {"mode": "slow_pages", "sleep": 0.2}))
    assert killed.status is RunStatus.TIMEOUT
    show = finished(b.app, b.run(name, {"mode": "show"}))
    saved = json.loads(output_of(b.app, show))
    pages = sorted(int(k.split("-")[1]) for k in saved if k.startswith("page-"))
    assert len(pages) >= 3
    # Every page before the checkpoint was saved; the checkpoint points after the last one.
    assert pages == list(range(1, len(pages) + 1))
    assert saved["checkpoint:pages"]["next"] in (len(pages), len(pages) + 1)
    assert set(stored_files(a.app, parser_id)) == {"state.json"}


@pytest.mark.services
def test_a_killed_workers_lease_expires_and_the_next_run_gets_its_last_state(
    machines: tuple[Machine, Machine],
    services_env: dict[str, str],
    services_app: Flask,
    tmp_path: Path,
) -> None:
    _, b = machines
    c = start_machine("c", services_env, services_app, tmp_path)
    try:
        name, _ = new_parser(c.app, "lost")
        saved = finished(c.app, c.run(name, {"mode": "key", "key": "saved"}))
        assert saved.status is RunStatus.COMPLETED, saved.error
        holder = c.run(name, {"mode": "key", "key": "never", "sleep": 60})
        with c.app.app_context():
            assert wait_for_run_status(holder, RunStatus.RUNNING).status is RunStatus.RUNNING
        time.sleep(1)  # materialized, the parser sleeping
        os.kill(c.proc.pid, signal.SIGKILL)
        c.proc.wait()
        started = time.monotonic()
        after = finished(b.app, b.run(name, {"mode": "key", "key": "after"}))
        assert after.status is RunStatus.COMPLETED, after.error
        assert time.monotonic() - started < 30
        assert json.loads(output_of(b.app, after)) == {"saved": saved.id, "after": after.id}
    finally:
        stop_machine(c)


def wait_for_run_status(run_id: int, status: RunStatus, timeout_s: float = 30) -> Run:
    deadline = time.monotonic() + timeout_s
    while True:
        db.session.expire_all()
        run = db.session.get(Run, run_id)
        if run.status is status or run.status.is_final or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


@pytest.mark.services
def test_reset_over_the_api_empties_the_state_and_is_refused_while_a_run_holds_it(
    machines: tuple[Machine, Machine], site: Any
) -> None:
    a, b = machines
    name, parser_id = new_parser(a.app, "reset")
    done = finished(a.app, a.run(name, {"base": site.base, "max_pages": 1}))
    assert done.status is RunStatus.COMPLETED, done.error
    assert stored_files(a.app, parser_id)
    client = api_client(a.app)
    with a.app.app_context():
        engine = db.engine
    token = state_lease.new_token()
    taken = state_lease.try_acquire(engine, parser_id, token, 30, 12345, "host:1")
    assert isinstance(taken, state_lease.Taken)
    assert (
        taken.version
        == state_sync.read_manifest(a.app.extensions["parseq"].storage, parser_id).version
    )
    try:
        busy = client.delete(f"/api/v1/parsers/{name}/state")
        assert busy.status_code == 409
        assert busy.json["error"]["code"] == "state_busy"
        assert "run 12345 on host:1" in busy.json["error"]["message"]
    finally:
        state_lease.release(engine, parser_id, token)
    assert (
        api_client(a.app, read_only=True).delete(f"/api/v1/parsers/{name}/state").status_code == 403
    )
    assert api_client(a.app, auth=False).delete(f"/api/v1/parsers/{name}/state").status_code == 401
    missing = client.delete("/api/v1/parsers/no-such-parser/state")
    assert (missing.status_code, missing.json["error"]["code"]) == (404, "not_found")

    reset = client.delete(f"/api/v1/parsers/{name}/state")
    assert reset.status_code == 204 and reset.data == b""
    assert stored_files(a.app, parser_id) == {}
    # B starts over at page 1, from the network: A's cached page went with the reset.
    again = finished(b.app, b.run(name, {"base": site.base, "max_pages": 1}))
    assert output_of(b.app, again).split("\n")[0] == "page 1 net"
    assert site.hits["/tag/love/page/1/"] == 2
    # A's own copy is dropped at its next run too.
    show = finished(a.app, a.run(name, {"mode": "show"}))
    assert json.loads(output_of(a.app, show)) == {"checkpoint:pages": {"next": 2}}


# --- the embedded default: SQLite and local storage -----------------------------------------


def test_the_admin_button_resets_the_state(embedded_app: Flask, site: Any) -> None:
    parser = add_parser("admin-reset", "state_pages.py")
    run = wait_for_run(runs.create_run(parser, {"base": site.base, "max_pages": 1}).id)
    assert run.status is RunStatus.COMPLETED, run.error
    assert stored_files(embedded_app, parser.id)
    client = admin_client(embedded_app)
    page = client.get(f"/admin/parsers/details/?id={parser.id}")
    assert b'id="reset-state"' in page.data
    resp = client.post(
        f"/admin/parsers/reset-state/{parser.id}",
        data={"csrf_token": client.csrf_token},  # type: ignore[attr-defined]
        follow_redirects=True,
    )
    assert resp.status_code == 200
    assert b"State of admin-reset reset" in resp.data
    assert stored_files(embedded_app, parser.id) == {}
    config = embedded_app.extensions["parseq"].config
    assert not (config.state_dir / str(parser.id)).exists()


def test_the_state_is_capped_by_evicting_the_oldest_pages(
    make_config: Callable[..., Config], site: Any
) -> None:
    from tests.conftest import running

    with running(make_config(state_max_bytes=12_000)) as app:
        parser = add_parser("capped", "state_pages.py")
        for _ in range(3):
            run = wait_for_run(runs.create_run(parser, {"base": site.base, "max_pages": 3}).id)
            assert run.status is RunStatus.COMPLETED, run.error
        files = stored_files(app, parser.id)
        assert sum(f["size"] for f in files.values()) <= 12_000
        assert "state.json" in files
        kept = {k: v for k, v in files.items() if k.endswith(".json") and k != "state.json"}
        local = app.extensions["parseq"].config.state_dir / str(parser.id)
        urls = {json.loads((local / k).read_text())["url"].rsplit("/", 2)[-2] for k in kept}
        assert urls and "9" in urls and "1" not in urls  # the newest pages stay


def test_a_run_gives_up_waiting_for_state_held_too_long(
    make_config: Callable[..., Config],
) -> None:
    app = create_app(make_config(state_max_wait_s=1.0))
    init_db(app)
    with app.app_context():
        parser = add_parser("held", "state_pages.py")
        run = runs.create_run(parser, {"mode": "show"}, enqueue=False)
        token = state_lease.new_token()
        taken = state_lease.try_acquire(db.engine, parser.id, token, 60, None, "reset")
        assert isinstance(taken, state_lease.Taken)
        assert state_lease.renew(db.engine, parser.id, token, 60, "e:1", stateful=True)
        assert execute_run(run.id) is RunStatus.ERROR
        db.session.expire_all()
        run = db.session.get(Run, run.id)
        assert run.status is RunStatus.ERROR
        assert "gave up after 1 s waiting for the parser's state, held by reset" in run.error
        state_lease.release(db.engine, parser.id, token)
        retry = runs.create_run(parser, {"mode": "show"}, enqueue=False)
        assert execute_run(retry.id) is RunStatus.COMPLETED
        db.engine.dispose()


def test_a_lease_is_one_holders_until_it_expires(sqlite_app: Flask) -> None:
    parser = add_parser("leased", "state_pages.py")
    engine = db.engine
    mine, theirs = state_lease.new_token(), state_lease.new_token()
    assert state_lease.try_acquire(engine, parser.id, mine, 0.3, 1, "w1") == state_lease.Taken(None)
    holder = state_lease.try_acquire(engine, parser.id, theirs, 0.3, 2, "w2")
    assert isinstance(holder, state_lease.Holder) and (holder.run_id, holder.holder) == (1, "w1")
    again = state_lease.try_acquire(engine, parser.id, mine, 0.3, 1, "w1")  # re-entrant
    assert isinstance(again, state_lease.Taken)
    time.sleep(0.4)  # no renewal: expired
    assert isinstance(
        state_lease.try_acquire(engine, parser.id, theirs, 30, 2, "w2"), state_lease.Taken
    )
    assert not state_lease.renew(engine, parser.id, mine, 30)  # taken over: not mine to renew
    state_lease.release(engine, parser.id, mine)  # nor to release
    assert isinstance(
        state_lease.try_acquire(engine, parser.id, mine, 30, 1, "w1"), state_lease.Holder
    )
    assert state_lease.peek(engine, parser.id) == state_lease.Taken(None, False)
    assert state_lease.renew(engine, parser.id, theirs, 30, "e:3", stateful=True)  # a commit
    state_lease.release(engine, parser.id, theirs)
    # Free again, and the next holder (or a look) learns the stored state's version.
    assert state_lease.peek(engine, parser.id) == state_lease.Taken("e:3", True)
    taken = state_lease.try_acquire(engine, parser.id, mine, 30, 1, "w1")
    assert taken == state_lease.Taken("e:3", True)


def test_deleting_a_parser_deletes_its_stored_state(embedded_app: Flask, site: Any) -> None:
    parser = add_parser("deleted", "state_pages.py")
    run = wait_for_run(runs.create_run(parser, {"base": site.base, "max_pages": 1}).id)
    assert run.status is RunStatus.COMPLETED, run.error
    parser_id = parser.id
    assert stored_files(embedded_app, parser_id)
    runs.delete_parser(parser, embedded_app.extensions["parseq"].storage)
    storage = embedded_app.extensions["parseq"].storage
    assert state_sync.read_manifest(storage, parser_id) is None
    assert not list((storage.root / "state" / str(parser_id)).rglob("*.*"))
