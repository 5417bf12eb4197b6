"""Where run result files live: a local folder or an S3 bucket, picked by URL scheme.

Like papermill's I/O handlers: ``file:///abs/path`` gives :class:`LocalStorage`,
``s3://bucket/prefix`` gives :class:`S3Storage` (any S3-compatible endpoint).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from parseq.core.config import Config
from parseq.core.errors import ConfigError, NotFound, StorageError

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
#: Files up to this size go to S3 in a single PUT; larger ones as multipart uploads.
SINGLE_PUT_BYTES = 8 * 1024 * 1024
#: ``(start, stop)``: a half-open byte interval, as ``Range`` requests ask for.
ByteRange = tuple[int, int]


class Storage(Protocol):
    """What Parseq needs of a storage backend. Keys are ``/``-separated relative paths."""

    def put(self, key: str, path: Path) -> None:
        """Store the local file ``path`` under ``key``."""

    def iter_bytes(self, key: str, byte_range: ByteRange | None = None) -> Iterator[bytes]:
        """Stream the object's bytes (or bytes ``[start, stop)``); raise :class:`NotFound`
        when it is missing."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def check(self) -> None:
        """Raise :class:`StorageError` when the backend is unreachable."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise NotFound(f"invalid storage key {key!r}")
    return key


class LocalStorage:
    """Files under a local root folder (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    def put(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)

    def iter_bytes(self, key: str, byte_range: ByteRange | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no stored object {key!r}") from None
        if byte_range is None:
            return _iter_file(fh, None)
        fh.seek(byte_range[0])
        return _iter_file(fh, byte_range[1] - byte_range[0])

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} is not writable: {exc}") from exc


def _iter_file(fh, remaining: int | None) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    with fh:
        while remaining is None or remaining > 0:
            size = CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining)
            chunk = fh.read(size)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


class S3Storage:
    """Objects in an S3 bucket under a prefix, through boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str | None = None,
    ) -> None:
        import boto3  # imported here so the embedded default never pays for it
        from botocore.config import Config as BotoConfig

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            region_name=region or None,
            config=BotoConfig(
                retries={"max_attempts": 3, "mode": "standard"},
                # No CRC32 of every body and download (botocore's default since 1.36, CPU per
                # request): TLS, or over plain HTTP SigV4's payload hash, guards the bytes, and
                # some S3-compatible services reject the checksum headers (boto/boto3#4392).
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        # botocore sends a file body after an "Expect: 100-continue" exchange, a round trip
        # of its own per PUT; a single PUT's body is small enough to just send.
        self.client.meta.events.register("before-sign.s3.PutObject", _send_without_expect)

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, path: Path) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        full_key = self._key(key)
        try:
            if path.stat().st_size <= SINGLE_PUT_BYTES:
                # One PUT: upload_file's transfer manager costs a thread pool per call.
                with path.open("rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=full_key, Body=body)
            else:
                self.client.upload_file(str(path), self.bucket, full_key)
        except (Boto3Error, BotoCoreError, ClientError) as exc:
            raise StorageError(f"upload of {key!r} to s3://{self.bucket} failed: {exc}") from exc

    def iter_bytes(self, key: str, byte_range: ByteRange | None = None) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        extra = {}
        if byte_range is not None:
            # S3 ranges are inclusive at both ends (RFC 9110 section 14.1.2).
            extra["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound(f"no stored object {key!r}") from None
            raise StorageError(f"download of {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"download of {key!r} failed: {exc}") from exc
        return obj["Body"].iter_chunks(CHUNK_BYTES)

    def presigned_url(
        self,
        key: str,
        expires_s: int,
        content_disposition: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """A time-limited GET URL for the object that needs no credentials (a 302 target)."""
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        if content_type:
            params["ResponseContentType"] = content_type
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"bucket s3://{self.bucket} is not reachable: {exc}") from exc


def _send_without_expect(request: Any, **_kwargs: Any) -> None:
    """botocore ``before-sign`` handler: drop the request's ``Expect: 100-continue`` header
    (which SigV4 does not sign)."""
    del request.headers["Expect"]  # an email.message.Message: no error when absent


def get_storage(config: Config) -> Storage:
    """The storage backend that ``config.storage_url`` names."""
    url = urlparse(config.storage_url)
    if url.scheme == "file":
        return LocalStorage(Path(unquote(url.path)))
    if url.scheme == "s3":
        if not url.netloc:
            raise ConfigError(f"PARSEQ_STORAGE_URL {config.storage_url!r} names no bucket")
        return S3Storage(
            bucket=url.netloc,
            prefix=url.path,
            endpoint_url=config.s3_endpoint_url,
            access_key_id=config.s3_access_key_id,
            secret_access_key=config.s3_secret_access_key,
            region=config.s3_region,
        )
    raise ConfigError(
        f"PARSEQ_STORAGE_URL scheme {url.scheme!r} is not supported (use file:// or s3://)"
    )
