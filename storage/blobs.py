"""Content-addressed blob store: every blob is named by the sha256 of its bytes.

Two backends pass the same test suite: local files (the embedded default) and S3-compatible
object storage. Because names are hashes, writing a blob that exists is a no-op, and blobs are
always written before the database rows that point at them, so a crash leaves at worst an
unreferenced blob, never a row without its bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from storage.errors import NotFound, StorageUnavailable
from storage.settings import Settings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StagedBlob:
    """A file on local disk, already hashed, waiting to be stored."""

    sha256: str
    path: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def not_writable(store: str, exc: Exception) -> StorageUnavailable:
    """The error for a write the store refused: a 503 naming the store and the system's reason."""
    return StorageUnavailable(
        f"the blob store {store} is not writable ({exc}); make it writable for the service (permissions, free "
        "space, the volume or bucket; LABELWHEEL_BLOB_URL says where it is), then retry"
    )


def _check_key(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class BlobStore(ABC):
    """Store and read blobs by their sha256."""

    #: Where callers should stage files for ``put_many``: on the store's own disk when it has one,
    #: so that storing a staged file is a rename rather than a copy. None means the system temp dir.
    staging_dir: Path | None = None

    @abstractmethod
    def put_many(self, blobs: Sequence[StagedBlob]) -> None:
        """Durably store every blob; when this returns, all of them survive a crash.

        Files staged under ``staging_dir`` may be moved into the store rather than copied. StorageUnavailable
        when the store refuses the writes (some of the blobs may be stored: harmless, nothing points at them).
        """

    @abstractmethod
    def open(self, sha256: str) -> IO[bytes]:
        """A binary stream of the blob; raises NotFound when it does not exist."""

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the blob if present."""

    @abstractmethod
    def check(self) -> None:
        """Raise when the store cannot be written to (for /health)."""

    def make_staging_dir(self, prefix: str) -> Path:
        """A new folder under ``staging_dir`` for files on their way into the store (the caller removes it)."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.staging_dir))

    def put_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(data)
        try:
            self.put_many([StagedBlob(sha256, Path(f.name))])
        finally:
            os.unlink(f.name)
        return sha256

    def read_bytes(self, sha256: str) -> bytes:
        with self.open(sha256) as f:
            return f.read()

    def iter_chunks(self, sha256: str) -> Iterator[bytes]:
        """The blob in chunks; NotFound is raised by this call, before any chunk is produced."""
        return _chunks(self.open(sha256))


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(CHUNK):
            yield chunk


class LocalBlobStore(BlobStore):
    """Blobs under ``root/ab/abcdef…``; written to a temp file, fsynced, then renamed into place.

    ``put_many`` fsyncs a batch in parallel before renaming: the file system's journal then commits
    many files at once, which is what makes ingesting small images fast without giving up durability.
    """

    def __init__(self, root: Path, *, sync_threads: int = 16) -> None:
        self.root = root
        self.tmp = root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.staging_dir = self.tmp
        self._sync_threads = sync_threads

    def path(self, sha256: str) -> Path:
        _check_key(sha256)
        return self.root / sha256[:2] / sha256

    def put_many(self, blobs: Sequence[StagedBlob]) -> None:
        todo = {b.sha256: b for b in blobs if not self.path(b.sha256).exists()}
        if not todo:
            return
        try:
            self._put(todo.values())
        except OSError as exc:  # permissions, a read-only or full disk, a file where a folder should be
            raise not_writable(str(self.root), exc) from exc

    def make_staging_dir(self, prefix: str) -> Path:
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))
        except OSError as exc:
            raise not_writable(str(self.root), exc) from exc

    def _put(self, todo: Iterable[StagedBlob]) -> None:
        staged: list[tuple[Path, Path]] = []
        copies: list[Path] = []
        try:
            for blob in todo:
                if self.tmp in blob.path.parents:
                    source = blob.path  # staged on our disk: rename it into place, no copy
                else:
                    source = self.tmp / f"{blob.sha256}.{uuid.uuid4().hex}"
                    shutil.copyfile(blob.path, source)
                    copies.append(source)
                staged.append((source, self.path(blob.sha256)))
            self._parallel(_fsync_path, [source for source, _ in staged])
            dirs = {self.root}
            for source, final in staged:
                final.parent.mkdir(exist_ok=True)
                os.replace(source, final)
                dirs.add(final.parent)
            self._parallel(_fsync_path, dirs)
        finally:
            for copy in copies:
                copy.unlink(missing_ok=True)

    def _parallel(self, work: Callable[[Path], None], paths: Iterable[Path]) -> None:
        """fsyncs issued together let the file system commit them in one journal transaction."""
        paths = list(paths)
        with ThreadPoolExecutor(max(1, min(self._sync_threads, len(paths)))) as pool:
            list(pool.map(work, paths))

    def open(self, sha256: str) -> IO[bytes]:
        try:
            return open(self.path(sha256), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is not in the store", code="blob_missing") from None

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def check(self) -> None:
        probe = self.tmp / f"health.{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3BlobStore(BlobStore):
    """Blobs as objects ``prefix/ab/abcdef…`` in a bucket of any S3-compatible service.

    An S3 PUT is atomic and durable once acknowledged, so no staging is needed.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, upload_threads: int = 8) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._upload_threads = upload_threads

    def key(self, sha256: str) -> str:
        _check_key(sha256)
        name = f"{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def put_many(self, blobs: Sequence[StagedBlob]) -> None:
        todo = list({b.sha256: b for b in blobs}.values())
        if not todo:
            return

        def upload(blob: StagedBlob) -> None:
            if not self.exists(blob.sha256):
                self.client.upload_file(str(blob.path), self.bucket, self.key(blob.sha256))

        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with ThreadPoolExecutor(min(self._upload_threads, len(todo))) as pool:
                list(pool.map(upload, todo))
        except (S3UploadFailedError, BotoCoreError, ClientError) as exc:  # no bucket, no permission, unreachable
            raise not_writable(f"s3://{self.bucket}/{self.prefix}", exc) from exc

    def open(self, sha256: str) -> IO[bytes]:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise NotFound(f"blob {sha256} is not in the store", code="blob_missing") from None
            raise
        return response["Body"]

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def open_blob_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> BlobStore:
    """A blob store from ``file:///path`` or ``s3://bucket/prefix``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(Path(parsed.path))
    if parsed.scheme == "s3":
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
        )
        return S3BlobStore(client, parsed.netloc, parsed.path)
    raise ValueError(f"unsupported blob store URL {url!r}: use file:///PATH or s3://BUCKET/PREFIX")


def blob_store_from_settings(settings: Settings) -> BlobStore:
    return open_blob_store(
        settings.resolved_blob_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
    )
