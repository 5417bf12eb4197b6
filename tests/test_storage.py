"""Storage backends: a local folder and a real S3 endpoint (moto's server over HTTP)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from parseq.core.config import Config
from parseq.core.errors import ConfigError, NotFound, StorageError
from parseq.storage.base import LocalStorage, S3Storage, get_storage
from tests.conftest import S3_KEYS


def _roundtrip(storage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 5000  # > one chunk
    src.write_bytes(payload)
    storage.put("runs/1/data/file.bin", src)
    assert storage.exists("runs/1/data/file.bin")
    assert b"".join(storage.iter_bytes("runs/1/data/file.bin")) == payload
    with pytest.raises(NotFound):
        storage.iter_bytes("runs/1/missing.txt")
    storage.delete("runs/1/data/file.bin")
    assert not storage.exists("runs/1/data/file.bin")
    storage.check()


def test_local_storage_roundtrip(tmp_path: Path) -> None:
    _roundtrip(LocalStorage(tmp_path / "store"), tmp_path)


@pytest.mark.services
def test_s3_storage_roundtrip(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    config = Config.from_env(
        environ={},
        storage_url=f"s3://{s3_bucket}/some/prefix",
        s3_endpoint_url=s3_endpoint,
        var_dir=tmp_path,
        **S3_KEYS,
    )
    storage = get_storage(config)
    assert isinstance(storage, S3Storage)
    _roundtrip(storage, tmp_path)
    src = tmp_path / "x.txt"
    src.write_text("x")
    storage.put("runs/2/x.txt", src)
    keys = [o["Key"] for o in storage.client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["some/prefix/runs/2/x.txt"]


@pytest.mark.services
def test_s3_missing_bucket_is_a_storage_error(tmp_path: Path, s3_endpoint: str) -> None:
    storage = S3Storage(
        "no-such-bucket",
        endpoint_url=s3_endpoint,
        region="us-east-1",
        **{
            "access_key_id": S3_KEYS["s3_access_key_id"],
            "secret_access_key": S3_KEYS["s3_secret_access_key"],
        },
    )
    with pytest.raises(StorageError):
        storage.check()
    src = tmp_path / "x.txt"
    src.write_text("x")
    with pytest.raises(StorageError):
        storage.put("runs/1/x.txt", src)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "runs/../../etc", "runs//x", "./x"])
def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(NotFound):
        LocalStorage(tmp_path).iter_bytes(key)


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "gs://bucket"])
def test_unknown_storage_urls_are_config_errors(tmp_path: Path, url: str) -> None:
    config = replace(Config.from_env(environ={}, var_dir=tmp_path), storage_url=url)
    with pytest.raises(ConfigError):
        get_storage(config)


def _own_boto3_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's default session keeps the credentials it found first: a test that sets them in
    the environment gets a session of its own, which reads no region or file of the machine."""
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


@pytest.mark.services
@pytest.mark.parametrize("key", ["runs/1/output.txt", "runs/2/a b+c~ü%20;=.txt"])
def test_s3_put_stores_any_key_through_put_object(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, key: str
) -> None:
    storage = S3Storage(
        s3_bucket,
        prefix="put",
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id=S3_KEYS["s3_access_key_id"],
        secret_access_key=S3_KEYS["s3_secret_access_key"],
    )
    src = tmp_path / "output.txt"
    src.write_bytes(b"line 1\nline 2\n")
    storage.put(key, src)
    got = storage.client.get_object(Bucket=s3_bucket, Key=f"put/{key}")
    assert got["Body"].read() == b"line 1\nline 2\n"


def test_without_credentials_a_put_is_a_storage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _own_boto3_session(monkeypatch)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = S3Storage("bkt-1", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    src = tmp_path / "x.txt"
    src.write_text("x")
    with pytest.raises(StorageError, match="Unable to locate credentials"):
        storage.put("runs/1/x.txt", src)
