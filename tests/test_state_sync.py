"""The state folder mirrored in storage: materialize, incremental commit, eviction, reset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from parseq.core.errors import StateBusy
from parseq.storage import state_commit, state_sync
from parseq.storage.base import LocalStorage

PARSER = 7


class CountingStorage(LocalStorage):
    """Local storage that counts the objects written, read and deleted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []
        self.gets: list[str] = []
        self.deletes: list[str] = []

    def put(self, key: str, path: Path) -> None:
        self.puts.append(key)
        super().put(key, path)

    def iter_bytes(self, key, byte_range=None):  # type: ignore[no-untyped-def]
        self.gets.append(key)
        return super().iter_bytes(key, byte_range)

    def delete(self, key: str) -> None:
        self.deletes.append(key)
        super().delete(key)

    def reset_counts(self) -> None:
        self.puts.clear()
        self.gets.clear()
        self.deletes.clear()


@pytest.fixture
def storage(tmp_path: Path) -> CountingStorage:
    return CountingStorage(tmp_path / "store")


def machine(tmp_path: Path, name: str) -> Path:
    """A worker's state folder of the parser (its var/parser-state/<id>)."""
    return tmp_path / name / "parser-state" / str(PARSER)


def cache_entry(state_dir: Path, key: str, body: bytes, age_s: float = 0) -> None:
    base = state_dir / "cache" / key[:2]
    base.mkdir(parents=True, exist_ok=True)
    (base / f"{key}.body").write_bytes(body)
    (base / f"{key}.json").write_text(json.dumps({"url": key}))
    if age_s:
        for path in base.glob(f"{key}.*"):
            stamp = path.stat().st_mtime - age_s
            os.utime(path, (stamp, stamp))


def run_on(storage: CountingStorage, state_dir: Path, change, max_bytes: int = 0):  # type: ignore[no-untyped-def]
    """What a worker does around a run: materialize, let the run change the folder, commit."""
    synced = state_sync.materialize(storage, PARSER, state_dir)
    change(state_dir)
    return state_commit.commit(
        storage, PARSER, state_dir, synced.base, max_bytes, scratch=state_dir.parent
    )


def test_a_second_machine_gets_the_state_and_unchanged_files_are_not_uploaded_again(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")

    def first(d: Path) -> None:
        (d / "state.json").write_text('{"checkpoint:pages": {"next": 3}}')
        for i in range(100):
            cache_entry(d, f"{i:064x}", os.urandom(10_000))

    run_on(storage, a, first)
    assert len(storage.puts) == 1 + 200 + 0 + 1  # state.json, 100 entries, the manifest

    storage.reset_counts()
    synced = state_sync.materialize(storage, PARSER, b)
    assert synced.downloaded == 201
    assert json.loads((b / "state.json").read_text()) == {"checkpoint:pages": {"next": 3}}
    assert sorted(p.name for p in (b / "cache").rglob("*.body")) == sorted(
        p.name for p in (a / "cache").rglob("*.body")
    )

    # One page changes on B: its body goes up, and the manifest; nothing else.
    storage.reset_counts()
    changed = f"{5:064x}"

    def one_page(d: Path) -> None:
        (d / "cache" / changed[:2] / f"{changed}.body").write_bytes(b"new body")

    done = state_commit.commit(storage, PARSER, b, synced.base, scratch=b.parent)
    assert done.uploaded == 0 and storage.puts == []  # nothing changed yet: no request
    one_page(b)
    done = state_commit.commit(storage, PARSER, b, done.manifest, scratch=b.parent)
    assert done.uploaded == 1 and len(done.manifest.garbage) == 1
    assert storage.puts == [
        state_sync.blob_key(
            PARSER, done.manifest.files[f"cache/{changed[:2]}/{changed}.body"]["sha256"]
        ),
        state_sync.manifest_key(PARSER),
    ]

    # Back on A: only the changed page comes down.
    storage.reset_counts()
    again = state_sync.materialize(storage, PARSER, a)
    assert again.downloaded == 1
    assert (a / "cache" / changed[:2] / f"{changed}.body").read_bytes() == b"new body"


def test_the_machine_that_ran_last_downloads_nothing(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")
    run_on(storage, a, lambda d: (d / "state.json").write_text("{}"))
    storage.reset_counts()
    synced = state_sync.materialize(storage, PARSER, a)
    assert synced.downloaded == 0
    assert storage.gets == [state_sync.manifest_key(PARSER)]


def test_deleted_files_are_deleted_in_storage_and_on_other_machines(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    run_on(storage, a, lambda d: [(d / n).write_text(n) for n in ("keep", "drop")])
    state_sync.materialize(storage, PARSER, b)
    assert (b / "drop").exists()
    storage.reset_counts()
    done = run_on(storage, a, lambda d: (d / "drop").unlink())
    assert set(done.manifest.files) == {"keep"}
    dropped = state_sync.scan(b)["drop"]["sha256"]
    assert done.manifest.garbage == [dropped] and storage.deletes == []  # deleted in a batch
    state_sync.materialize(storage, PARSER, b)
    assert not (b / "drop").exists() and (b / "keep").read_text() == "keep"


def test_unused_contents_are_deleted_in_batches_and_reused_until_then(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")
    run_on(storage, a, lambda d: (d / "page").write_text("v0"))
    for n in range(1, state_commit.GC_BATCH):
        done = run_on(storage, a, lambda d, n=n: (d / "page").write_text(f"v{n}"))
    assert len(done.manifest.garbage) == state_commit.GC_BATCH - 1 and storage.deletes == []
    storage.reset_counts()
    done = run_on(storage, a, lambda d: (d / "page").write_text("v0"))  # content comes back
    assert done.uploaded == 0 and storage.puts == [state_sync.manifest_key(PARSER)]
    done = run_on(storage, a, lambda d: (d / "page").write_text("new"))
    assert done.manifest.garbage == [] and done.deleted == state_commit.GC_BATCH
    assert sorted(p.name for p in (storage.root / "state" / str(PARSER) / "blobs").iterdir()) == [
        done.manifest.files["page"]["sha256"]
    ]


def test_the_page_cache_is_evicted_oldest_first_past_the_cap(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")

    def fill(d: Path) -> None:
        (d / "state.json").write_text('{"k": 1}')
        for i, age in enumerate((500, 100, 300, 200, 400)):  # entry i is `age` seconds old
            cache_entry(d, f"{i:064x}", b"x" * 1000, age_s=age)

    done = run_on(storage, a, fill, max_bytes=3000)
    left = {p.rsplit("/", 1)[1][:64] for p in done.manifest.files if p.startswith("cache/")}
    # Each entry is 1000 + ~70 bytes; the newest two (ages 100, 200) fit beside state.json.
    assert left == {f"{1:064x}", f"{3:064x}"}
    assert done.over_cap_bytes == 0
    assert (a / "state.json").exists()
    assert done.manifest.total_bytes <= 3000
    assert not list((a / "cache").glob(f"{0:02x}/{0:064x}.*"))


def test_state_over_the_cap_without_a_page_cache_is_kept_and_reported(
    storage: CountingStorage, tmp_path: Path
) -> None:
    done = run_on(
        storage, machine(tmp_path, "a"), lambda d: (d / "state.json").write_text("x" * 500), 100
    )
    assert "state.json" in done.manifest.files
    assert done.over_cap_bytes == 400


def test_a_change_left_by_a_run_that_never_committed_is_kept_for_the_next_commit(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")
    run_on(storage, a, lambda d: (d / "state.json").write_text('{"n": 1}'))
    (a / "state.json").write_text('{"n": 2}')  # a run whose commit failed (storage down)
    synced = state_sync.materialize(storage, PARSER, a)
    assert (a / "state.json").read_text() == '{"n": 2}'
    state_commit.commit(storage, PARSER, a, synced.base, scratch=a.parent)
    b = machine(tmp_path, "b")
    state_sync.materialize(storage, PARSER, b)
    assert (b / "state.json").read_text() == '{"n": 2}'


def test_a_local_change_loses_to_a_newer_stored_one(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    run_on(storage, a, lambda d: (d / "state.json").write_text('{"n": 1}'))
    run_on(storage, b, lambda d: (d / "state.json").write_text('{"n": 2}'))
    (a / "state.json").write_text('{"n": 3}')  # A's uncommitted change, B committed after
    synced = state_sync.materialize(storage, PARSER, a)
    assert synced.conflicts == ["state.json"]
    assert (a / "state.json").read_text() == '{"n": 2}'


def test_state_from_before_it_was_shared_is_kept_and_stored(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")
    a.mkdir(parents=True)
    (a / "state.json").write_text('{"old": true}')
    done = run_on(storage, a, lambda d: None)
    assert set(done.manifest.files) == {"state.json"}


def test_a_reset_empties_every_machines_copy(storage: CountingStorage, tmp_path: Path) -> None:
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    run_on(storage, a, lambda d: (d / "state.json").write_text('{"n": 1}'))
    state_sync.materialize(storage, PARSER, b)
    (b / "leftover").write_text("a killed run's file")
    state_commit.reset_stored(storage, PARSER, tmp_path)
    assert state_sync.read_manifest(storage, PARSER).files == {}
    for d in (a, b):
        state_sync.materialize(storage, PARSER, d)
        assert list(d.iterdir()) == []


def test_temporaries_lock_files_and_symlinks_are_not_synced(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")
    secret = tmp_path / "secret"
    secret.write_text("root's")

    def plant(d: Path) -> None:
        (d / ".parseq-tmp-abc").write_text("half")
        (d / ".state.json.lock").write_text("")
        (d / "link").symlink_to(secret)
        (d / "state.json").write_text("{}")

    done = run_on(storage, a, plant)
    assert set(done.manifest.files) == {"state.json"}


def test_a_planted_symlink_is_not_written_through(storage: CountingStorage, tmp_path: Path) -> None:
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    run_on(storage, a, lambda d: cache_entry(d, "ab" + "0" * 62, b"page"))
    outside = tmp_path / "outside"
    outside.mkdir()
    b.mkdir(parents=True)
    (b / "cache").symlink_to(outside)  # a parser's run on B planted it
    state_sync.materialize(storage, PARSER, b)
    assert list(outside.iterdir()) == []
    assert not (b / "cache").is_symlink()
    assert (b / "cache" / "ab" / ("ab" + "0" * 62 + ".body")).read_bytes() == b"page"


def test_a_new_file_survives_runs_whose_commits_all_failed(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")
    run_on(storage, a, lambda d: (d / "state.json").write_text("{}"))
    (a / "new").write_text("from a run whose commit failed")
    for _ in range(2):  # two more runs, neither commits
        state_sync.materialize(storage, PARSER, a)
        assert (a / "new").exists()
    synced = state_sync.materialize(storage, PARSER, a)
    done = state_commit.commit(storage, PARSER, a, synced.base, scratch=a.parent)
    assert set(done.manifest.files) == {"state.json", "new"}


def test_told_the_version_it_synced_last_a_machine_reads_nothing_from_storage(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")
    done = run_on(storage, a, lambda d: (d / "state.json").write_text("{}"))
    storage.reset_counts()
    synced = state_sync.materialize(storage, PARSER, a, stored_version=done.manifest.version)
    assert synced.base.version == done.manifest.version and storage.gets == []
    # Another version stored meanwhile (the lease says so): the manifest is read.
    state_sync.materialize(storage, PARSER, a, stored_version="other:9")
    assert storage.gets == [state_sync.manifest_key(PARSER)]


def test_a_commit_stops_before_its_manifest_when_the_lease_is_lost(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a")
    done = run_on(storage, a, lambda d: (d / "state.json").write_text('{"n": 1}'))
    synced = state_sync.materialize(storage, PARSER, a)
    (a / "state.json").write_text('{"n": 2}')
    published: list[str] = []

    def lost(version: str, stateful: bool) -> bool:
        published.append(version)
        return False

    with pytest.raises(StateBusy):
        state_commit.commit(storage, PARSER, a, synced.base, scratch=a.parent, publish=lost)
    assert published == [f"{done.manifest.epoch}:{done.manifest.generation + 1}"]
    assert state_sync.read_manifest(storage, PARSER) == done.manifest


def test_two_runs_that_started_without_state_keep_both_state_json_keys(
    storage: CountingStorage, tmp_path: Path
) -> None:
    a, b = machine(tmp_path, "a"), machine(tmp_path, "b")
    start_a = state_sync.materialize(storage, PARSER, a)
    start_b = state_sync.materialize(storage, PARSER, b)
    (a / "state.json").write_text('{"from_a": 1, "both": "a"}')
    (b / "state.json").write_text('{"from_b": 2, "both": "b"}')
    state_commit.commit(storage, PARSER, a, start_a.base, scratch=a.parent)
    # B commits second: it brings in what A stored (as the worker does under the lease).
    merged = state_sync.materialize(storage, PARSER, b)
    assert merged.conflicts == []
    done = state_commit.commit(storage, PARSER, b, merged.base, scratch=b.parent)
    assert done.manifest.generation == 2
    assert json.loads((b / "state.json").read_text()) == {"from_a": 1, "from_b": 2, "both": "b"}
    del start_b
