"""16 annotators labeling one project at once against a real server: nothing lost, doubled or over-leased.

Each annotator is a thread with its own HTTP client doing next + submit until the queue answers 204; half of
them label in one round trip (``POST .../annotations?next=true``, the answer bringing the next task).
Some submissions are retried with the same Idempotency-Key (one after the other, or two sent at
once from two connections), and some tasks are skipped. A skipped image goes back to the pool, but
annotators who already heard 204 have stopped asking, so a short sequential sweep afterwards lets
everyone ask again until nobody gets a task. The run is then checked through the API and the tables.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from storage.db import Database
from storage.models import Annotation, Assignment, AssignmentStatus, Image
from tests import imagefactory as img
from tests.test_cli import serving

pytestmark = pytest.mark.postgres  # behaviour that can differ by dialect

ANNOTATORS = 16
IMAGES = 150
LABELS = ["cat", "dog", "bird"]
SETTINGS = {"overlap_rate": 0.2, "overlap_k": 3, "gold_rate": 0.0, "lease_minutes": 10}
SKIP_RATE = 0.05
KEYED_RATE = 0.8
RETRY_RATE = 0.05  # of keyed submissions: half retried after the first answer, half sent twice at once


@dataclass
class Server:
    base: str
    admin_token: str
    database_url: str
    log: Path


@dataclass(frozen=True)
class Annotator:
    id: int
    token: str


@dataclass(frozen=True)
class Lease:
    """A served task, with the client-side window in which the lease was certainly live.

    It was granted before ``live_from`` (the next-task answer arrived) and ended after ``live_until``
    (the submit or skip request was sent), so two such windows overlapping mean two live leases.
    """

    image_id: int
    annotator_id: int
    live_from: float
    live_until: float
    skipped: bool


@dataclass(frozen=True)
class Ack:
    id: int
    image_id: int
    annotator_id: int
    label: str
    status: int
    key: str | None


@dataclass
class Record:
    """What the clients saw, shared by all threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    leases: list[Lease] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)

    def status(self, what: str, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[what, response.status_code] += 1

    def add(self, item: Lease | Ack) -> None:
        with self.lock:
            (self.leases if isinstance(item, Lease) else self.acks).append(item)


@pytest.fixture
def server(tmp_path, database_url) -> Iterator[Server]:
    token = f"concurrency-admin-{secrets.token_hex(8)}"
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(tmp_path / "data"),
        "LABELWHEEL_DATABASE_URL": database_url,
        "LABELWHEEL_ADMIN_TOKEN": token,
        "LABELWHEEL_LOG_LEVEL": "WARNING",
    }
    log_path = tmp_path / "serve.log"
    with serving(env, log_path) as (base, _):
        yield Server(base, token, database_url, log_path)


def _client(base: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _expect(response: httpx.Response, *codes: int) -> httpx.Response:
    assert response.status_code in codes, f"{response.request.method} {response.request.url}: {response.text}"
    return response


def _set_up(admin: httpx.Client) -> tuple[int, list[Annotator]]:
    project = _expect(
        admin.post(
            "/api/v1/projects",
            json={"name": f"crowd-{uuid.uuid4().hex[:8]}", "labels": LABELS, "settings": SETTINGS},
        ),
        201,
    ).json()["id"]
    files = [("files", (f"{i}.png", img.png(8, 8, (i % 256, i // 256, 77)), "image/png")) for i in range(IMAGES)]
    uploaded = _expect(admin.post(f"/api/v1/projects/{project}/images", files=files), 201).json()["files"]
    assert len({f["image_id"] for f in uploaded}) == IMAGES
    annotators = []
    for i in range(ANNOTATORS):
        user = _expect(admin.post("/api/v1/users", json={"name": f"ann{i}", "role": "annotator"}), 201).json()
        _expect(admin.post(f"/api/v1/projects/{project}/members", json={"user_id": user["id"]}), 201)
        annotators.append(Annotator(user["id"], user["token"]))
    return project, annotators


def _submit(
    client: httpx.Client, project: int, body: dict, key: str | None, record: Record, one_trip: bool
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    params = {"next": "true"} if one_trip else {}
    response = client.post(f"/api/v1/projects/{project}/annotations", json=body, headers=headers, params=params)
    record.status("submit", response)
    return _expect(response, 200, 201)


def _send(
    client: httpx.Client,
    twin: httpx.Client,
    project: int,
    body: dict,
    rng: random.Random,
    record: Record,
    one_trip: bool,
) -> list[httpx.Response]:
    """Submit once (most with an Idempotency-Key), or twice with one key: a retry after the answer, or a race."""
    key = uuid.uuid4().hex if rng.random() < KEYED_RATE else None
    roll = rng.random()
    send = (project, body, key, record, one_trip)
    if key is None or roll >= RETRY_RATE:
        return [_submit(client, *send)]
    if roll < RETRY_RATE / 2:
        return [_submit(client, *send), _submit(client, *send)]
    with ThreadPoolExecutor(2) as pool:
        racing = [pool.submit(_submit, c, *send) for c in (client, twin)]
        return [f.result() for f in racing]


def _label_until_204(
    server: Server,
    project: int,
    annotator: Annotator,
    record: Record,
    *,
    seed: int,
    skip_rate: float,
    one_trip: bool = False,
) -> int:
    """Take tasks until the queue answers 204 (or, in one round trip per label, an answer brings no next task);
    return how many were served."""
    rng = random.Random(seed)
    served = 0
    task: dict | None = None  # the task the last answer brought, in one round trip
    with _client(server.base, annotator.token) as client, _client(server.base, annotator.token) as twin:
        while True:
            if task is None:
                response = client.get(f"/api/v1/projects/{project}/tasks/next")
                record.status("next", response)
                if _expect(response, 200, 204).status_code == 204:
                    return served
                task = response.json()
            served += 1
            live_from = time.perf_counter()
            image_id = task["image_id"]
            if rng.random() < skip_rate:
                live_until = time.perf_counter()
                skipped = client.post(f"/api/v1/projects/{project}/tasks/{image_id}/skip")
                record.status("skip", skipped)
                _expect(skipped, 204)
                record.add(Lease(image_id, annotator.id, live_from, live_until, skipped=True))
                task = None
                continue
            body = {"image_id": image_id, "label": rng.choice(LABELS), "duration_ms": rng.randrange(100, 5000)}
            live_until = time.perf_counter()
            responses = _send(client, twin, project, body, rng, record, one_trip)
            record.add(Lease(image_id, annotator.id, live_from, live_until, skipped=False))
            key = responses[0].request.headers.get("Idempotency-Key")
            answers = [r.json() for r in responses]
            for response, answer in zip(responses, answers, strict=True):
                stored = answer["annotation"] if one_trip else answer
                record.add(Ack(stored["id"], image_id, annotator.id, body["label"], response.status_code, key))
            if one_trip:
                # A retry, or a race, of one request brings the same next task: never a second lease.
                nexts = {None if a["next_task"] is None else a["next_task"]["image_id"] for a in answers}
                assert len(nexts) == 1, f"one request answered with different next tasks: {nexts}"
                task = answers[0]["next_task"]
                if task is None:
                    return served
            else:
                task = None


def _run(server: Server, project: int, annotators: list[Annotator], record: Record) -> tuple[int, int]:
    """All annotators at once, then sequential sweeps; return tasks served in each part."""
    with ThreadPoolExecutor(len(annotators)) as pool:
        futures = [
            pool.submit(_label_until_204, server, project, a, record, seed=i, skip_rate=SKIP_RATE, one_trip=i % 2 == 1)
            for i, a in enumerate(annotators)
        ]
        concurrent = sum(f.result() for f in futures)
    swept = 0
    while True:  # until a whole round serves nothing
        served = sum(
            _label_until_204(server, project, a, record, seed=1000 + i, skip_rate=0.0) for i, a in enumerate(annotators)
        )
        swept += served
        if served == 0:
            return concurrent, swept


def _all_annotations(admin: httpx.Client, project: int) -> list[dict]:
    items: list[dict] = []
    after = None
    while True:
        params = {"limit": 1000} | ({"after": after} if after is not None else {})
        page = _expect(admin.get(f"/api/v1/projects/{project}/annotations", params=params), 200).json()
        items += page["items"]
        after = page["next_after"]
        if after is None:
            return items


def _all_labels(admin: httpx.Client, project: int) -> dict[int, dict]:
    labels: dict[int, dict] = {}
    after = None
    while True:
        params = {"limit": 1000} | ({"after": after} if after is not None else {})
        page = _expect(admin.get(f"/api/v1/projects/{project}/labels", params=params), 200).json()
        labels |= {item["image_id"]: item for item in page["items"]}
        after = page["next_after"]
        if after is None:
            return labels


def _overlapping_live_leases(leases: list[Lease], needed: dict[int, int]) -> list[str]:
    """Moments where an image had more certainly-live leases than it needs labels."""
    problems = []
    by_image: dict[int, list[Lease]] = defaultdict(list)
    for lease in leases:
        by_image[lease.image_id].append(lease)
    for image_id, held in by_image.items():
        events = sorted([(lease.live_from, 1) for lease in held] + [(lease.live_until, -1) for lease in held])
        live = 0
        for _, step in events:  # at equal times an end sorts before a start: touching windows don't overlap
            live += step
            if live > needed[image_id]:
                holders = sorted(
                    (lease.annotator_id, round(lease.live_from, 4), round(lease.live_until, 4)) for lease in held
                )
                problems.append(f"image {image_id} (needs {needed[image_id]}): {live} live leases; {holders}")
                break
    return problems


@pytest.mark.slow
def test_sixteen_annotators_at_once_lose_nothing_and_never_share_a_lease(server):
    record = Record()
    with _client(server.base, server.admin_token) as admin:
        project, annotators = _set_up(admin)
        start = time.monotonic()
        try:
            concurrent, swept = _run(server, project, annotators, record)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nserver log, last lines:\n{server.log.read_text()[-6000:]}") from exc
        elapsed = time.monotonic() - start
        annotations = _all_annotations(admin, project)
        labels = _all_labels(admin, project)

    errors = {key: n for key, n in record.statuses.items() if key[1] >= 500}
    assert not errors, f"server errors {errors}; log:\n{server.log.read_text()[-4000:]}"
    summary = f"{concurrent} tasks served at once, {swept} in the sweep, {elapsed:.1f} s; {dict(record.statuses)}"

    # Every acknowledged label is stored once; a repeated key answered with the first one's id.
    acks_by_id: dict[int, list[Ack]] = defaultdict(list)
    for ack in record.acks:
        acks_by_id[ack.id].append(ack)
    for ack_id, acks in acks_by_id.items():
        assert len({(a.image_id, a.annotator_id, a.label, a.key) for a in acks}) == 1, acks
        assert [a.status for a in acks].count(201) == 1, f"annotation {ack_id} was answered {acks}"
        assert len(acks) == 1 or acks[0].key is not None, acks
    replays = sum(len(acks) - 1 for acks in acks_by_id.values())
    assert replays > 0, "no retry happened: the replay path went untested"
    stored_ids = [a["id"] for a in annotations]
    assert len(stored_ids) == len(set(stored_ids))
    assert set(stored_ids) == set(acks_by_id), "stored annotations differ from the acknowledged ones"
    for item in annotations:
        ack = acks_by_id[item["id"]][0]
        assert (item["image_id"], item["annotator_id"], item["label"]) == (ack.image_id, ack.annotator_id, ack.label)
        assert item["is_current"], item

    db = Database(server.database_url)
    try:
        with db.session() as session:
            images = {i.id: i for i in session.scalars(select(Image).where(Image.project_id == project))}
            assignments = list(session.scalars(select(Assignment).where(Assignment.project_id == project)))
            keyed = session.execute(
                select(Annotation.annotator_id, Annotation.idempotency_key, func.count())
                .where(Annotation.project_id == project, Annotation.idempotency_key.is_not(None))
                .group_by(Annotation.annotator_id, Annotation.idempotency_key)
            ).all()
    finally:
        db.dispose()
    assert len(images) == IMAGES
    assert all(n == 1 for *_, n in keyed), "an Idempotency-Key stored more than one row"
    needed = {image_id: image.labels_needed for image_id, image in images.items()}
    # Single and overlapped images; ties among the overlapped ones asked for more, up to review_max_labels.
    assert {1, 3} <= set(needed.values()) <= {1, 3, 4, 5}, "the project should mix single and overlapped images"

    # No image has more current labels than it needs, and nobody labeled an image twice.
    current = Counter(a["image_id"] for a in annotations if a["is_current"])
    pairs = Counter((a["image_id"], a["annotator_id"]) for a in annotations if a["is_current"])
    assert max(pairs.values()) == 1, [pair for pair, n in pairs.items() if n > 1]
    for image_id, image in images.items():
        assert current[image_id] == image.label_count <= image.labels_needed, (image_id, current[image_id], image)

    # No lease was shared beyond what an image needs, by the tables and by the clients' clocks.
    live = Counter(a.image_id for a in assignments if a.status is not AssignmentStatus.skipped)
    too_many = {i: n for i, n in live.items() if n > needed[i]}
    assert not too_many, f"images served to more annotators than they need labels: {too_many}"
    assert all(a.status is not AssignmentStatus.leased for a in assignments), "a served task was left leased"
    served = Counter((lease.image_id, lease.annotator_id) for lease in record.leases)
    assert max(served.values()) == 1, "an annotator was served the same image twice"
    assert len(assignments) == len(record.leases)
    assert not _overlapping_live_leases(record.leases, needed)

    # 204 means nothing is left for you: an image the sweep still served needed labels when its
    # annotator heard 204, so it was then fully leased to others, and only a skip can have freed it,
    # or a tie that asked for one more label (review) once its overlap labels were all given.
    skipped = {lease.image_id for lease in record.leases[:concurrent] if lease.skipped}
    given = Counter(lease.image_id for lease in record.leases[:concurrent] if not lease.skipped)
    reviewed = {i for i, n in needed.items() if n > SETTINGS["overlap_k"] and given[i] >= SETTINGS["overlap_k"]}
    late = sorted({lease.image_id for lease in record.leases[concurrent:]} - skipped - reviewed)
    assert not late, f"images never skipped still waited for the sweep (a 204 came too early): {late}; {summary}"

    # The queue drained: an image may stay short only once every annotator has seen it.
    seen = Counter(a.image_id for a in assignments)
    short = {
        i: (image.label_count, image.labels_needed)
        for i, image in images.items()
        if image.label_count < image.labels_needed
    }
    assert all(seen[i] == ANNOTATORS for i in short), f"images left short with annotators to spare: {short}; {summary}"
    labeled = {i for i, item in labels.items() if item["label_count"] == item["labels_needed"]}
    assert labeled == set(images) - set(short)
    assert all(images[i].queue_tier is None for i in labeled)
