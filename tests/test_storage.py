"""Storage backends: a local folder and a real S3 endpoint (moto's server over HTTP)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from parseq.config import Config
from parseq.errors import ConfigError, NotFound, StorageError
from parseq.storage import LocalStorage, S3Storage, get_storage
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


class _Answer:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _Recorder:
    """Stands in for the HTTP session of the direct PUT: records what it was asked to send."""

    def __init__(self, status_code: int = 200, error: Exception | None = None) -> None:
        self.sent: list = []  # type: ignore[type-arg]
        self.status_code = status_code
        self.error = error

    def send(self, request):  # type: ignore[no-untyped-def]
        self.sent.append(request)
        if self.error is not None:
            raise self.error
        return _Answer(self.status_code)


def _own_boto3_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's default session keeps the credentials it found first: a test that sets them in
    the environment gets a session of its own, which reads no region or file of the machine."""
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _direct(storage: S3Storage, http: _Recorder) -> None:
    assert storage._fast is not None
    base_url, credentials, region, _ = storage._fast
    storage._fast = (base_url, credentials, region, http)


@pytest.mark.parametrize(
    ("endpoint", "region", "prefix"),
    [
        ("http://127.0.0.1:9", "us-east-1", ""),  # path style, plain HTTP
        (None, "eu-west-1", "some/prefix"),  # AWS, virtual-hosted style
        ("https://storage.yandexcloud.net", "ru-central1", "p"),
        (None, None, ""),  # AWS, no region given
    ],
)
@pytest.mark.parametrize("key", ["runs/1/output.txt", "runs/2/a b+c~ü%20;=.txt"])
def test_direct_put_sends_what_put_object_sends(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    endpoint: str | None,
    region: str | None,
    prefix: str,
    key: str,
) -> None:
    """Same URL, same body, same signature (at the same instant) as botocore's own PutObject,
    with a session token too: what a real S3 service checks. Nothing is sent."""
    import datetime

    import botocore.auth
    from botocore.awsrequest import AWSResponse

    from parseq.storage import _EmptyBody

    now = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    _own_boto3_session(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token")
    storage = S3Storage("bkt-1", prefix=prefix, endpoint_url=endpoint, region=region)
    http = _Recorder()
    _direct(storage, http)
    src = tmp_path / "file"
    src.write_bytes(b"hello\n\x00")
    storage.put(key, src)
    (direct,) = http.sent

    by_botocore = []

    def capture(request, **_kwargs):  # type: ignore[no-untyped-def]
        by_botocore.append(request)
        return AWSResponse(request.url, 200, {}, _EmptyBody())

    storage.client.meta.events.register("before-send.s3.PutObject", capture)
    storage.client.put_object(Bucket="bkt-1", Key=storage._key(key), Body=src.read_bytes())
    (expected,) = by_botocore
    assert direct.method == expected.method == "PUT"
    assert direct.url == expected.url
    assert direct.body == b"hello\n\x00"
    for header in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token"):
        assert _text(direct.headers[header]) == _text(expected.headers[header]), header
    assert direct.headers["Content-Length"] == "7"
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token," in _text(
        expected.headers["Authorization"]
    )


@pytest.mark.services
def test_s3_put_is_one_direct_put(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    storage = S3Storage(
        s3_bucket,
        prefix="direct",
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id=S3_KEYS["s3_access_key_id"],
        secret_access_key=S3_KEYS["s3_secret_access_key"],
    )
    calls = []
    monkeypatch.setattr(storage.client, "put_object", lambda **kw: calls.append(kw))
    src = tmp_path / "output.txt"
    src.write_bytes(b"line 1\nline 2\n")
    storage.put("runs/7/a b+c~ü.txt", src)
    assert calls == []
    got = storage.client.get_object(Bucket=s3_bucket, Key="direct/runs/7/a b+c~ü.txt")
    assert got["Body"].read() == b"line 1\nline 2\n"


@pytest.mark.services
@pytest.mark.parametrize(
    ("answer", "stays_on"),
    [
        ({"status_code": 403}, False),  # the service wants what put_object adds
        ({"status_code": 503}, True),
        ({"error": ConnectionResetError("reset")}, True),
    ],
    ids=["403", "503", "no answer"],
)
def test_s3_put_falls_back_to_put_object(
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    s3_endpoint: str,
    s3_bucket: str,
    answer: dict,  # type: ignore[type-arg]
    stays_on: bool,
) -> None:
    http = _Recorder(**answer)  # one per test: it records what it was sent
    storage = S3Storage(
        s3_bucket,
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id=S3_KEYS["s3_access_key_id"],
        secret_access_key=S3_KEYS["s3_secret_access_key"],
    )
    _direct(storage, http)
    src = tmp_path / "output.txt"
    src.write_text("stored anyway")
    storage.put("runs/8/output.txt", src)
    got = storage.client.get_object(Bucket=s3_bucket, Key="runs/8/output.txt")
    assert got["Body"].read() == b"stored anyway"
    assert len(http.sent) == 1
    assert (storage._fast is not None) is stays_on
    assert ("refused a direct PUT (HTTP 403)" in caplog.text) is not stays_on


def test_a_direct_put_only_where_it_is_what_put_object_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config as BotoConfig

    from parseq.storage import _fast_put_setup

    _own_boto3_session(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    where = {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}
    unsigned = boto3.client("s3", **where, config=BotoConfig(signature_version=UNSIGNED))
    assert _fast_put_setup(unsigned, "bkt-1") is None
    # boto3's default signs a CRC32 checksum header too, which the direct PUT does not send.
    assert _fast_put_setup(boto3.client("s3", **where), "bkt-1") is None
    storage = S3Storage("bkt-1", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    assert storage._fast is not None
    assert storage._fast[:1] == ("http://127.0.0.1:9/bkt-1/",)


def test_without_credentials_a_put_is_a_storage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _own_boto3_session(monkeypatch)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = S3Storage("bkt-1", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    assert storage._fast is None
    src = tmp_path / "x.txt"
    src.write_text("x")
    with pytest.raises(StorageError, match="Unable to locate credentials"):
        storage.put("runs/1/x.txt", src)
