"""The at-scale layout with real processes: migrations, two API replicas (`labelwheel serve` without its embedded
worker) and two `labelwheel worker` processes, sharing only PostgreSQL, Redis and the S3 server on loopback.

16 annotators, spread over both replicas, label a digits project in one round trip per label while the flywheel
trains. Mid-run one replica and the worker running a training are killed with SIGKILL: the replica's annotators
send their request again to the other one (same Idempotency-Key), and the other worker finishes the training.
`docker-compose.yml` starts the same processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import psutil
import pytest
from sqlalchemy import select

from service.launcher import LABELWHEEL, running_server
from storage.db import Database
from storage.models import (
    Annotation,
    Image,
    Job,
    JobKind,
    JobStatus,
    ModelKind,
    ModelStatus,
    ModelVersion,
    Role,
)
from tests.digits import digit_project, digits
from tests.factories import Account
from tests.test_blobs import new_bucket
from tests.test_worker import start_worker, stop_worker

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "deployment-test-admin-token-0123456789"
ANNOTATORS = 16
IMAGES = 160
THINK_SECONDS = 0.02  # between an answer and the next label, so labeling lasts while the first training runs
# Six short epochs: long enough to be killed mid-job, cheap enough for the suite.
TRAINING = {"min_new_labels": 40, "epochs": 6, "patience": 6, "min_epoch_images": 256}
FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


@dataclass
class Deployment:
    database_url: str
    bucket: str
    s3_endpoint: str
    apis: list[tuple[subprocess.Popen[bytes], str]]
    workers: list[subprocess.Popen[bytes]]


@pytest.fixture
def deployment(tmp_path: Path, database_url: str, redis_url: str, s3_endpoint: str) -> Iterator[Deployment]:
    bucket = new_bucket(s3_endpoint)
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(tmp_path / "data"),  # holds nothing here: every store is a server
        "LABELWHEEL_DATABASE_URL": database_url,
        "LABELWHEEL_QUEUE_URL": redis_url,
        "LABELWHEEL_BLOB_URL": f"s3://{bucket}/labelwheel",
        "LABELWHEEL_S3_ENDPOINT_URL": s3_endpoint,
        "LABELWHEEL_S3_REGION": "us-east-1",
        "LABELWHEEL_S3_ACCESS_KEY_ID": "testing",
        "LABELWHEEL_S3_SECRET_ACCESS_KEY": "testing",
        "LABELWHEEL_EMBEDDED_WORKER": "false",
        "LABELWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
        "LABELWHEEL_JOB_STALE_SECONDS": "6",
        "LABELWHEEL_LOG_LEVEL": "WARNING",
    }
    migrated = subprocess.run([LABELWHEEL, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr
    with ExitStack() as stack:
        with ThreadPoolExecutor(2) as starting:  # both at once: each takes seconds of imports
            started = [
                starting.submit(stack.enter_context, running_server(env, tmp_path / f"api{i}.log")) for i in range(2)
            ]
            apis = [f.result() for f in started]
        # Then the workers (their lanes are "down" in /health while they start, which the APIs' start waits out).
        workers = [start_worker(env) for _ in range(2)]
        for worker in workers:
            stack.callback(stop_worker, worker)
        yield Deployment(database_url, bucket, s3_endpoint, apis, workers)


@dataclass
class Record:
    """What the annotators' clients saw, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)  # (base URL, status), status 0: no answer
    acks: dict[int, list[tuple[int, int, str, int]]] = field(default_factory=lambda: defaultdict(list))

    def saw(self, base: str, status: int) -> None:
        with self.lock:
            self.statuses[base, status] += 1

    def ack(self, annotation: dict, status: int) -> None:
        with self.lock:
            self.acks[annotation["id"]].append(
                (annotation["image_id"], annotation["annotator_id"], annotation["label"], status)
            )


def _annotate(bases: list[str], token: str, project: int, truth: dict[int, str], record: Record) -> int:
    """Label until nothing is left, one request per label; a replica that stops answering is left for the next
    one, with the same request (and key). Returns the labels given."""
    clients = [httpx.Client(base_url=b, headers={"Authorization": f"Bearer {token}"}, timeout=30) for b in bases]
    current = 0

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        nonlocal current
        for _ in range(2 * len(clients)):
            try:
                response = clients[current].request(method, path, **kwargs)
            except httpx.TransportError:
                record.saw(bases[current], 0)
                current = (current + 1) % len(clients)
                continue
            record.saw(bases[current], response.status_code)
            return response
        raise AssertionError(f"no replica answered {method} {path}")

    try:
        first = call("GET", f"/api/v1/projects/{project}/tasks/next")
        task = first.json() if first.status_code == 200 else None
        given = 0
        while task is not None:
            body = {"image_id": task["image_id"], "label": truth[task["image_id"]]}
            headers = {"Idempotency-Key": uuid.uuid4().hex}
            answer = call("POST", f"/api/v1/projects/{project}/annotations?next=true", json=body, headers=headers)
            assert answer.status_code in (200, 201), answer.text
            record.ack(answer.json()["annotation"], answer.status_code)
            task = answer.json()["next_task"]
            given += 1
            time.sleep(THINK_SECONDS)
        return given
    finally:
        for client in clients:
            client.close()


def _wait_for(condition: Callable[[], object], *, timeout: float, what: str, futures: list[Future] = ()) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for future in futures:
            if future.done() and future.exception():
                raise future.exception()  # an annotator failed: say why, not that we timed out
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _jobs(db: Database, project: int) -> list[Job]:
    with db.read_session() as session:
        return list(session.scalars(select(Job).where(Job.project_id == project).order_by(Job.id)))


def _worker_running(job: Job, workers: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """The `labelwheel worker` whose lane process (``host:pid`` in the job) runs the job."""
    lane = int(str(job.worker).rpartition(":")[2])
    (owner,) = [w for w in workers if lane in {c.pid for c in psutil.Process(w.pid).children()}]
    return owner


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_replicas_and_two_workers_survive_a_sigkill_each_and_lose_or_double_nothing(deployment):
    (api_a, base_a), (api_b, base_b) = deployment.apis
    db = Database(deployment.database_url)
    record = Record()
    try:
        with httpx.Client(base_url=base_a, timeout=30) as admin_client:
            admin = Account(0, "admin", Role.admin, ADMIN_TOKEN)
            annotators = []
            for i in range(ANNOTATORS):
                created = admin_client.post(
                    "/api/v1/users", json={"name": f"ann{i}", "role": "annotator"}, headers=admin.headers
                )
                assert created.status_code == 201, created.text
                annotators.append(Account(created.json()["id"], f"ann{i}", Role.annotator, created.json()["token"]))
            project, truth = digit_project(admin_client, admin, *annotators, count=IMAGES, training=TRAINING)

        with ThreadPoolExecutor(ANNOTATORS) as pool:
            futures = [
                pool.submit(
                    _annotate, [base_a, base_b] if i % 2 else [base_b, base_a], a.token, project["id"], truth, record
                )
                for i, a in enumerate(annotators)
            ]
            _wait_for(
                lambda: len(record.acks) >= IMAGES // 4, timeout=60, what="a quarter of the labels", futures=futures
            )
            api_a.kill()  # SIGKILL, mid-run: requests in flight get no answer
            api_a.wait()
            training = _wait_for(
                lambda: next(
                    (j for j in _jobs(db, project["id"]) if j.kind is JobKind.train and j.status is JobStatus.running),
                    None,
                ),
                timeout=60,
                what="a running training",
                futures=futures,
            )
            killed_worker = _worker_running(training, deployment.workers)
            os.killpg(killed_worker.pid, signal.SIGKILL)  # the worker and its lanes, mid-job
            killed_worker.wait()
            given = sum(f.result() for f in futures)

        def settled() -> list[Job] | None:
            jobs = _jobs(db, project["id"])
            return jobs if all(j.status in FINISHED for j in jobs) else None

        jobs = _wait_for(settled, timeout=90, what="every job to end")
        with db.read_session() as session:
            annotations = list(session.scalars(select(Annotation).where(Annotation.project_id == project["id"])))
            images = list(session.scalars(select(Image).where(Image.project_id == project["id"])))
            models = list(session.scalars(select(ModelVersion).where(ModelVersion.project_id == project["id"])))
        health = httpx.get(f"{base_b}/health", timeout=30)
        champion = max((m for m in models if m.status is ModelStatus.champion), key=lambda m: m.id)
        png = digits()[0][0]
        predicted = httpx.post(
            f"{base_b}/api/v1/projects/{project['id']}/predict",
            files=[("files", ("x.png", png, "image/png"))],
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )
    finally:
        db.dispose()

    # The replica that lived answered every request without a server error; the other one's clients moved over.
    assert not {key: n for key, n in record.statuses.items() if key[0] == base_b and key[1] >= 500}, record.statuses
    assert record.statuses[base_a, 0] >= 1, "no request met the killed replica: the fail-over went untested"
    assert health.status_code == 200, health.text  # the surviving worker keeps both lanes up

    # Every acknowledged label is stored exactly once, as acknowledged; a replayed request got the same row.
    assert len(annotations) == len(record.acks) == given
    for annotation in annotations:
        acks = record.acks[annotation.id]
        assert {a[:3] for a in acks} == {(annotation.image_id, annotation.annotator_id, annotation.label)}, acks
    # Nobody labeled an image twice, and no image has more labels than it needs (mining may have asked some for a
    # second look after the annotators stopped).
    assert max(Counter((a.image_id, a.annotator_id) for a in annotations).values()) == 1
    per_image = Counter(a.image_id for a in annotations)
    assert all(per_image[i.id] == i.label_count <= i.labels_needed for i in images), "an image over its labels"
    assert len(per_image) == IMAGES, "an image left unlabeled"

    # The training running on the killed worker was finished by the other; every training made exactly one model.
    (resumed,) = [j for j in jobs if j.id == training.id]
    assert resumed.status is JobStatus.succeeded and resumed.attempts >= 2, (resumed.status, resumed.error)
    # (A training queued on the labels and settings a model was just made from is skipped: it names that model.)
    trainings = [j for j in jobs if j.kind is JobKind.train and j.status is JobStatus.succeeded]
    skipped = [j for j in trainings if (j.result or {}).get("skipped")]
    made = Counter(m.job_id for m in models if m.kind is ModelKind.full)
    assert all(made[j.id] == 1 for j in trainings if j not in skipped), made
    assert sum(made.values()) == len(trainings) - len(skipped), (made, [j.result for j in skipped])
    assert all(j.result["model_id"] in {m.id for m in models} and made[j.id] == 0 for j in skipped), skipped
    failed = [(j.kind, j.error) for j in jobs if j.status is not JobStatus.succeeded]
    assert not failed, failed
    # The surviving replica serves the champion the workers made (or a refresh of it), its files read from S3.
    serving = {champion.id} | {m.id for m in models if m.kind is ModelKind.refresh and m.parent_id == champion.id}
    assert predicted.status_code == 200 and predicted.json()["model_id"] in serving, predicted.text

    # The images and the models' files are on the S3 server.
    s3 = boto3.client(
        "s3",
        endpoint_url=deployment.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    stored = s3.get_paginator("list_objects_v2").paginate(Bucket=deployment.bucket)
    assert sum(page.get("KeyCount", 0) for page in stored) > IMAGES
