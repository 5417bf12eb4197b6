"""Code versions and requirement locks across machines (issue #21), on real services.

Each "machine" is a process of its own that shares only PostgreSQL, RabbitMQ and S3 with the
others: its own ``PARSEQ_VAR_DIR``, ``PARSEQ_ENVS_DIR`` and empty parsers/notebooks roots, so
the only way a worker gets a parser's code or its locked requirements is through them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet
from flask import Flask

from parseq.core.config import Config
from parseq.db.models import RunStatus, db
from parseq.web.app import create_app
from tests.conftest import (
    api_client,
    delete_rabbit_queues,
    free_port,
    start_worker_process,
    stop_process,
    traversable,
    wait_for_run,
)

PROBE = "parseqprobe"
#: Machines share the secrets key as they share the database (each would make its own in var/).
SECRETS_KEY = Fernet.generate_key().decode()


def build_wheel(folder: Path, version: str) -> Path:
    """A pure-Python wheel of ``parseqprobe`` whose module says its version."""
    dist = f"{PROBE}-{version}.dist-info"
    files = {
        f"{PROBE}.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{PROBE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


@pytest.fixture
def package_index(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PEP 503 index (``python -m http.server``'s folder listings) and its package folder."""
    root = tmp_path / "index"
    folder = root / "simple" / PROBE
    folder.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/simple"
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{url}/", timeout=1).ok:
                break
        assert time.monotonic() < deadline, "package index did not start"
        time.sleep(0.05)
    yield url, folder
    proc.terminate()
    proc.wait(timeout=10)


def machine_env(services_env: dict[str, str], root: Path, **extra: str) -> dict[str, str]:
    """The services' variables for a machine of its own: its own var/, envs/ and empty
    parser roots."""
    for name in ("var", "envs", "parsers", "notebooks"):
        (root / name).mkdir(parents=True, exist_ok=True)
        traversable(root / name)
    return {
        **services_env,
        "PARSEQ_VAR_DIR": str(root / "var"),
        "PARSEQ_ENVS_DIR": str(root / "envs"),
        "PARSEQ_PARSERS_DIR": str(root / "parsers"),
        "PARSEQ_NOTEBOOKS_DIR": str(root / "notebooks"),
        "PARSEQ_SECRETS_KEY": SECRETS_KEY,
        **extra,
    }


@pytest.fixture
def cluster(
    services_app: Flask, services_env: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """A queue of this test's own, and a way to start machines on it."""
    queue = f"parseq_code_{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []

    def env_of(name: str, **extra: str) -> dict[str, str]:
        return machine_env(services_env, tmp_path / name, PARSEQ_QUEUE_NAME=queue, **extra)

    def worker(name: str, **extra: str) -> subprocess.Popen[bytes]:
        env = env_of(name, **extra)
        proc = start_worker_process(env, tmp_path / f"{name}.log", threads=1)
        procs.append(proc)
        return proc

    yield {"env": env_of, "worker": worker}
    for proc in procs:
        stop_process(proc)
    delete_rabbit_queues(queue, f"{queue}-notify")


@contextlib.contextmanager
def web_app(env: dict[str, str]) -> Iterator[Flask]:
    app = create_app(Config.from_env(environ=env))
    with app.app_context():
        yield app
        db.engine.dispose()


def _run(client: Any, name: str) -> Any:
    resp = client.post(f"/api/v1/parsers/{name}/runs", json={})
    assert resp.status_code == 202, resp.json
    run = wait_for_run(resp.json["id"], timeout_s=120)
    assert run.status is RunStatus.COMPLETED, run.error
    return client.get(f"/api/v1/runs/{run.id}").json


def _output(client: Any, run: dict[str, Any]) -> str:
    return client.get(f"/api/v1/runs/{run['id']}/files/output.txt").get_data(as_text=True)


def test_an_upload_runs_on_a_worker_that_never_saw_it_and_versions_stay_downloadable(
    cluster: dict[str, Any],
) -> None:
    name = f"remote-{uuid.uuid4().hex[:6]}"
    cluster["worker"]("worker-a")
    with web_app(cluster["env"]("web")) as app:
        client = api_client(app)
        first = b'print("from version one")\n'
        resp = client.put(f"/api/v1/parsers/{name}/code", data=first, content_type="text/x-python")
        assert resp.status_code == 201, resp.json
        run1 = _run(client, name)
        assert _output(client, run1) == "from version one\n" and run1["code_version"] == 1

        folder = io.BytesIO()
        with zipfile.ZipFile(folder, "w") as archive:
            archive.writestr("main.py", "print(open('words.txt').read().strip())\n")
            archive.writestr("words.txt", "from version two, a folder\n")
        resp = client.put(
            f"/api/v1/parsers/{name}/code",
            data=folder.getvalue(),
            content_type="application/zip",
        )
        assert resp.status_code == 200 and resp.json["version"] == 2, resp.json
        run2 = _run(client, name)
        assert _output(client, run2) == "from version two, a folder\n"
        assert run2["code_version"] == 2
        assert run2["worker_id"] != "" and run1["code_version"] == 1
        old = client.get(f"/api/v1/parsers/{name}/code?version=1")
        assert old.status_code == 200 and old.data == first
        assert client.get(f"/api/v1/parsers/{name}/code").data == folder.getvalue()


def test_an_unpinned_requirement_resolves_once_for_every_worker(
    cluster: dict[str, Any], package_index: tuple[str, Path]
) -> None:
    url, packages = package_index
    build_wheel(packages, "1.0")
    index = {"PARSEQ_PACKAGE_INDEX_URL": url}
    name = f"locked-{uuid.uuid4().hex[:6]}"
    script = (
        f"# /// script\n# dependencies = ['{PROBE}']\n# ///\n"
        f"import {PROBE}\nprint({PROBE}.VERSION)\n"
    ).encode()
    with web_app(cluster["env"]("web", **index)) as app:
        client = api_client(app)
        resp = client.put(f"/api/v1/parsers/{name}/code", data=script, content_type="text/x-python")
        assert resp.status_code == 201, resp.json
        lock = resp.json["requirements_lock"]
        assert f"{PROBE}==1.0" in lock and "--hash=sha256:" in lock
        # A newer release appears after the lock: the workers still install the locked one.
        build_wheel(packages, "2.0")
        cluster["worker"]("worker-a", **index)
        cluster["worker"]("worker-b", **index)
        outputs, workers = set(), set()
        for _ in range(12):
            run = _run(client, name)
            outputs.add(_output(client, run).strip())
            workers.add(run["worker_id"])
            if len(workers) == 2:
                break
        assert len(workers) == 2, "both workers should have taken a run"
        assert outputs == {"1.0"}
        # A change of the requirements is a new lock, resolved once again.
        resp = client.patch(f"/api/v1/parsers/{name}", json={"requirements": f"{PROBE}>=1"})
        assert resp.status_code == 200, resp.json
        assert resp.json["code_version"] == 2
        assert _output(client, _run(client, name)).strip() == "2.0"


def test_a_requirement_that_does_not_resolve_is_a_422_with_the_resolvers_message(
    cluster: dict[str, Any], package_index: tuple[str, Path]
) -> None:
    url, packages = package_index
    build_wheel(packages, "1.0")
    with web_app(cluster["env"]("web", PARSEQ_PACKAGE_INDEX_URL=url)) as app:
        client = api_client(app)
        script = f"# /// script\n# dependencies = ['{PROBE}>=5']\n# ///\n".encode()
        resp = client.put("/api/v1/parsers/nolock/code", data=script, content_type="text/x-python")
        assert resp.status_code == 422, resp.json
        assert resp.json["error"]["field"] == "requirements"
        assert f"{PROBE}" in resp.json["error"]["message"]
        assert "do not resolve" in resp.json["error"]["message"]
        assert client.get("/api/v1/parsers/nolock").status_code == 404


def _read_only_web(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """``parseq web`` in a mount namespace of its own where its parsers root is read-only,
    as the compose file mounts it."""
    parsers = env["PARSEQ_PARSERS_DIR"]
    cmd = (
        f"mount --bind {parsers} {parsers} && mount -o remount,bind,ro {parsers} && "
        f"exec {sys.executable} -m parseq.cli web --host 127.0.0.1 --port {port}"
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", cmd],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_compose_like_upload_through_the_api_with_a_read_only_parsers_root(
    cluster: dict[str, Any], services_app: Flask, tmp_path: Path
) -> None:
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip("needs mount namespaces (unshare -m) to mount the parsers root read-only")
    from parseq.services.tokens import create_token

    env = cluster["env"]("web")
    port = free_port()
    web = _read_only_web(env, port, tmp_path / "web.log")
    cluster["worker"]("worker-a")
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{base}/health", timeout=2).status_code in (200, 503):
                    break
            assert web.poll() is None, (tmp_path / "web.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "web.log").read_text()
            time.sleep(0.1)
        with services_app.app_context():
            _token, plain = create_token(f"compose-{uuid.uuid4().hex[:6]}")
        auth = {"Authorization": f"Bearer {plain}"}
        name = f"compose-{uuid.uuid4().hex[:6]}"
        resp = requests.put(
            f"{base}/parsers/{name}/code",
            data=b'print("uploaded to a read-only deployment")\n',
            headers={**auth, "Content-Type": "text/x-python"},
            timeout=30,
        )
        assert resp.status_code == 201, resp.text
        run = requests.post(
            f"{base}/parsers/{name}/runs?wait=60", json={}, headers=auth, timeout=90
        )
        assert run.status_code == 200, run.text
        assert run.json()["status"] == "completed", run.json()["error"]
        out = requests.get(f"{base}/runs/{run.json()['id']}/files/output.txt", headers=auth)
        assert out.text == "uploaded to a read-only deployment\n"
        assert list(Path(env["PARSEQ_PARSERS_DIR"]).iterdir()) == []
    finally:
        stop_process(web)
