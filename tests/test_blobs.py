"""One contract for every blob store: local files, and S3 against a real S3-compatible server process."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from storage.blobs import BlobStore, LocalBlobStore, StagedBlob, open_blob_store, sha256_file
from storage.errors import NotFound, StorageUnavailable
from storage.settings import load_settings
from tests import imagefactory as img
from tests.factories import make_project, make_user

S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}


def new_bucket(endpoint: str) -> str:
    import boto3

    bucket = f"lw-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "local":
        return open_blob_store((tmp_path / "blobs").as_uri())
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_blob_store(f"s3://{new_bucket(endpoint)}/some/prefix", endpoint_url=endpoint, **S3_KEYS)


def staged(tmp_path: Path, data: bytes) -> StagedBlob:
    path = tmp_path / f"staged-{uuid.uuid4().hex}"
    path.write_bytes(data)
    return StagedBlob(hashlib.sha256(data).hexdigest(), path)


def test_blobs_are_stored_and_read_back_by_their_hash(store, tmp_path):
    blobs = [staged(tmp_path, f"blob {i}".encode() * 1000) for i in range(5)]
    store.put_many(blobs)
    for blob in blobs:
        assert store.exists(blob.sha256)
        assert hashlib.sha256(store.read_bytes(blob.sha256)).hexdigest() == blob.sha256


def test_storing_the_same_content_twice_is_harmless(store, tmp_path):
    first, second = staged(tmp_path, b"same bytes"), staged(tmp_path, b"same bytes")
    store.put_many([first, second])
    store.put_many([staged(tmp_path, b"same bytes")])
    assert store.read_bytes(first.sha256) == b"same bytes"


def test_put_bytes_returns_the_sha256(store):
    sha = store.put_bytes(b"\x00\x01 binary")
    assert sha == hashlib.sha256(b"\x00\x01 binary").hexdigest()
    assert b"".join(store.iter_chunks(sha)) == b"\x00\x01 binary"


def test_a_missing_blob_is_not_found(store):
    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(missing)
    with pytest.raises(NotFound):
        store.open(missing)


def test_deleted_blobs_are_gone(store):
    sha = store.put_bytes(b"short-lived")
    store.delete(sha)
    assert not store.exists(sha)
    store.delete(sha)  # deleting again is not an error


def test_keys_must_be_sha256_digests(store):
    with pytest.raises(ValueError):
        store.exists("../../etc/passwd")


def test_the_health_check_passes_on_a_working_store(store):
    store.check()


def make_unwritable(store: BlobStore) -> None:
    """Break the store for real, root or not: its folder becomes a file; its bucket is deleted."""
    if isinstance(store, LocalBlobStore):
        shutil.rmtree(store.root)
        store.root.write_bytes(b"not a folder")
    else:
        store.client.delete_bucket(Bucket=store.bucket)


def test_an_unwritable_store_refuses_writes_as_unavailable(store, tmp_path):
    make_unwritable(store)
    blob = staged(tmp_path, b"nowhere to go")
    with pytest.raises(StorageUnavailable, match="not writable") as raised:
        store.put_many([blob])
    assert raised.value.status == 503 and raised.value.code == "storage_unavailable"
    assert not store.exists(blob.sha256)


def test_a_large_blob_streams_in_chunks(store, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    blob = staged(tmp_path, data)
    store.put_many([blob])
    chunks = list(store.iter_chunks(blob.sha256))
    assert len(chunks) > 1 and b"".join(chunks) == data


CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from storage.blobs import LocalBlobStore, StagedBlob
    store = LocalBlobStore(Path(sys.argv[1]))
    blobs = [StagedBlob(line.split()[0], Path(line.split()[1])) for line in sys.stdin.read().splitlines()]
    print("ready", flush=True)
    store.put_many(blobs)
    """
)


def test_a_crash_never_leaves_a_partial_file_under_a_final_name(tmp_path):
    """SIGKILL a writer at several moments of a batch; every file under a final name is whole."""
    sources = []
    for i in range(6):
        path = tmp_path / f"source{i}"
        path.write_bytes(os.urandom(24 * 1024 * 1024))
        sources.append(f"{sha256_file(path)} {path}")
    root = tmp_path / "blobs"
    moments = {
        "first temp file started": lambda: len(list((root / ".tmp").glob("*"))) >= 1,
        "several temp files written": lambda: len(list((root / ".tmp").glob("*"))) >= 4,
        "first final file renamed": lambda: any(root.glob("??/*")),
    }
    for moment, reached in moments.items():
        process = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WRITER, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        process.stdin.write("\n".join(sources))
        process.stdin.close()
        assert process.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while not reached() and time.monotonic() < deadline:
            time.sleep(0.0005)
        assert process.poll() is None, f"the writer finished before '{moment}' could be caught"
        process.send_signal(signal.SIGKILL)
        process.wait()
        for final in root.glob("??/*"):
            assert sha256_file(final) == final.name, f"partial file under a final name after a kill at '{moment}'"
        for path in [*root.glob("??/*"), *(root / ".tmp").glob("*")]:
            path.unlink()  # the next moment starts from an empty store again
    LocalBlobStore(root).check()


def test_the_service_runs_on_s3(s3_endpoint, tmp_path):
    """Upload and read images through the API with the blob store on the S3 server."""
    settings = load_settings(
        data_dir=tmp_path / "data",
        blob_url=f"s3://{new_bucket(s3_endpoint)}/images",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    app = create_app(settings)
    client = TestClient(app)
    from storage.models import Role

    admin = make_user(app, "root", Role.admin)
    project = make_project(client, admin)
    photo = img.encoded("JPEG")
    response = client.post(
        f"/api/v1/projects/{project['id']}/images",
        files=[("files", ("a.jpg", photo)), ("files", ("bad.png", b"nope"))],
        headers=admin.headers,
    )
    assert response.status_code == 201
    image_id = response.json()["files"][0]["image_id"]
    content = client.get(f"/api/v1/images/{image_id}/content", headers=admin.headers)
    assert content.content == photo
    assert client.get("/health").json()["checks"]["blob_store"] == "ok"
