"""Labeling benchmark: how fast annotators get tasks and submit labels, alone, sixteen at once, and in a huge pool.

Everything goes through a real ``labelwheel serve`` (uvicorn) over loopback HTTP, first on SQLite,
then on PostgreSQL when it is reachable (a fresh database, dropped at the end). Per database:

* one annotator in sequence: 1,000 next-task + submit loops; p50/p99 of each request
  (targets: submit p99 <= 15 ms, next-task p99 <= 20 ms; Label Studio: submit p50/p99 128/165 ms);
* 16 annotators at once, a thread and an HTTP connection each, next + submit for ``--seconds``
  (default 60) over a pool too large to drain (images inserted directly); labels/s and p50/p99
  (target: >= 200 labels/s on SQLite with submit p99 <= 100 ms, PostgreSQL at least as fast;
  Label Studio with 8 annotators: 10.6 labels/s, p99 1,660 ms);
* the count check: every acknowledged label is stored exactly once, no duplicates, none lost;
* next-task p50/p99 with 10k, 100k and 1M images waiting (rows inserted directly, then 300
  next + submit loops by one annotator at each size); "flat" means p99 <= 20 ms at every size and
  p50(1M) / p50(10k) <= 1.5;
* a detection project: one annotator, 1,000 next + submit loops, each answer 20 boxes on a 640x480
  image (checked, clipped and stored as the image's boxes in the submission); target: submit p99 <=
  20 ms, next-task p99 <= 20 ms like classification's (their ratio printed); and, for information,
  the third of three annotators answering 300 overlapped images, each answer merged with the two
  before it into consensus boxes within the submission.

Latencies are client-side wall times of whole HTTP requests (the client threads share the machine
with the server, as a browser would not). The server logs at WARNING, as in bench/ingest.py.

Run ``.venv/bin/python bench/labeling.py`` (``--quick``: 10 s and the 10k and 100k pools only).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from _rows import image_row
from sqlalchemy import create_engine, func, insert, make_url, select, text

from service.launcher import running_server
from storage.db import create_db_engine
from storage.ingest import queue_placement
from storage.migrate import upgrade
from storage.models import Annotation, Image, Split

POSTGRES_URL = os.environ.get("LABELWHEEL_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ANNOTATORS = 16
LABELS = [str(d) for d in range(10)]
SEQUENTIAL_LOOPS = 1000
POOL_LOOPS = 300
WARMUP_LOOPS = 20
INSERT_CHUNK = 10_000
CONCURRENT_SETTINGS = {"overlap_rate": 0.1, "overlap_k": 3, "gold_rate": 0.0, "lease_minutes": 10}
POOL_SETTINGS = {"overlap_rate": 0.0, "overlap_k": 3, "gold_rate": 0.0, "lease_minutes": 10}

TARGET_SUBMIT_P99_MS = 15
TARGET_NEXT_P99_MS = 20
TARGET_CONCURRENT_RATE = 200
TARGET_CONCURRENT_P99_MS = 100
TARGET_FLAT_RATIO = 1.5
TARGET_BOX_SUBMIT_P99_MS = 20
BOXES_PER_ANSWER = 20


@dataclass(frozen=True)
class Plan:
    seconds: float
    pools: tuple[int, ...]


FULL = Plan(seconds=60, pools=(10_000, 100_000, 1_000_000))
QUICK = Plan(seconds=10, pools=(10_000, 100_000))


# --- statistics ---------------------------------------------------------------------------------


@dataclass
class Timings:
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)

    def extend(self, other: Timings) -> None:
        self.next_ms += other.next_ms
        self.submit_ms += other.submit_ms


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def spread(values: list[float]) -> str:
    return f"{p50(values):.1f} / {p99(values):.1f} ms"


# --- database -----------------------------------------------------------------------------------


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database, migrated, dropped afterwards; None when the server is unreachable."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"lw_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        print(f"PostgreSQL skipped: {POSTGRES_URL} unreachable ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        yield None
        return
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def insert_images(
    url: str, *, project_id: int, count: int, settings: dict, seed: int, size: tuple[int, int] = (8, 8)
) -> float:
    """Insert ``count`` waiting images of ``size`` (random hashes, no blobs) in chunks; return the seconds it took."""
    rng = random.Random(seed)
    engine = create_db_engine(url)
    start = time.perf_counter()
    try:
        for offset in range(0, count, INSERT_CHUNK):
            rows = []
            for i in range(offset, min(offset + INSERT_CHUNK, count)):
                sha = rng.randbytes(32).hex()
                labels_needed, priority = queue_placement(sha, settings)
                rows.append(
                    image_row(
                        project_id,
                        sha,
                        split=Split.train,
                        original_name=f"bench/{seed}/{i}.png",
                        labels_needed=labels_needed,
                        label_count=0,
                        queue_tier=0,
                        priority=priority,
                        consensus_tie=False,
                        width=size[0],
                        height=size[1],
                    )
                )
            with engine.begin() as connection:
                connection.execute(insert(Image), rows)
        if engine.dialect.name == "postgresql":  # what autovacuum does on its own after a large insert
            with engine.connect() as connection:
                connection.execute(text("ANALYZE images"))
                connection.commit()
    finally:
        engine.dispose()
    return time.perf_counter() - start


@dataclass(frozen=True)
class CountCheck:
    acknowledged: int
    stored: int
    missing: int
    unexpected: int
    doubled_pairs: int
    over_needed: int  # images with more current labels than they need, or a label_count that disagrees

    @property
    def ok(self) -> bool:
        return self.acknowledged == self.stored and not (
            self.missing or self.unexpected or self.doubled_pairs or self.over_needed
        )


def count_check(url: str, *, project_id: int, acknowledged: set[int]) -> CountCheck:
    """Compare the acknowledged annotation ids with the table; look for doubled labels and over-full images."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            stored = set(connection.scalars(select(Annotation.id).where(Annotation.project_id == project_id)))
            per_pair = (
                select(func.count())
                .where(Annotation.project_id == project_id, Annotation.is_current)
                .group_by(Annotation.image_id, Annotation.annotator_id)
                .having(func.count() > 1)
            )
            doubled = len(connection.execute(per_pair).all())
            current = (
                select(Annotation.image_id, func.count().label("n"))
                .where(Annotation.project_id == project_id, Annotation.is_current)
                .group_by(Annotation.image_id)
                .subquery()
            )
            over = connection.scalar(
                select(func.count())
                .select_from(current.join(Image, Image.id == current.c.image_id))
                .where((current.c.n > Image.labels_needed) | (current.c.n != Image.label_count))
            )
    finally:
        engine.dispose()
    return CountCheck(
        acknowledged=len(acknowledged),
        stored=len(stored),
        missing=len(acknowledged - stored),
        unexpected=len(stored - acknowledged),
        doubled_pairs=doubled,
        over_needed=over or 0,
    )


# --- server and clients -------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    base: str
    admin_token: str


@contextmanager
def serving(tmp: Path, database_url: str) -> Iterator[Server]:
    """``labelwheel serve`` on ``database_url``, with its data directory and log under ``tmp``."""
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(tmp / "data"),
        "LABELWHEEL_DATABASE_URL": database_url,
        "LABELWHEEL_ADMIN_TOKEN": token,
        "LABELWHEEL_LOG_LEVEL": "WARNING",
        "LABELWHEEL_EMBEDDED_WORKER": "false",  # the API alone, as measured before the flywheel existed
    }
    tmp.mkdir(parents=True, exist_ok=True)
    with running_server(env, tmp / "server.log") as (process, base):
        yield Server(process, base, token)


def client(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def expect(response: httpx.Response, *codes: int) -> httpx.Response:
    if response.status_code not in codes:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} returned {response.status_code}, "
            f"expected {codes}: {response.text[:2000]}"
        )
    return response


def create_project(
    admin: httpx.Client, name: str, settings: dict, members: list[int], task_type: str = "classification"
) -> int:
    body = {"name": name, "labels": LABELS, "settings": settings, "task_type": task_type}
    project = expect(admin.post("/api/v1/projects", json=body), 201).json()["id"]
    for user_id in members:
        expect(admin.post(f"/api/v1/projects/{project}/members", json={"user_id": user_id}), 201)
    return project


def create_annotators(admin: httpx.Client, count: int) -> list[tuple[int, str]]:
    users = []
    for i in range(count):
        user = expect(admin.post("/api/v1/users", json={"name": f"annotator{i}", "role": "annotator"}), 201).json()
        users.append((user["id"], user["token"]))
    return users


@dataclass
class Outcome:
    """One annotator's loops: timings, the ids of acknowledged labels, and any unexpected answer."""

    timings: Timings = field(default_factory=Timings)
    acknowledged: set[int] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)
    drained: bool = False


def boxes_answer(rng: random.Random, *, image_id: int, width: int, height: int) -> list[dict]:
    """``BOXES_PER_ANSWER`` boxes of 10-60 px: the image's own objects (the same for every annotator), each
    edge moved by up to 2 px, and one class in ten changed."""
    objects = random.Random(image_id)
    boxes = []
    for _ in range(BOXES_PER_ANSWER):
        w, h = objects.uniform(10, 60), objects.uniform(10, 60)
        x, y = objects.uniform(2, width - w - 2), objects.uniform(2, height - h - 2)
        label = objects.choice(LABELS) if rng.random() > 0.1 else rng.choice(LABELS)
        dx, dy, dw, dh = (rng.uniform(-2, 2) for _ in range(4))
        x0, y0 = max(x + dx, 0.0), max(y + dy, 0.0)
        w, h = min(w + dw, width - x0), min(h + dh, height - y0)  # inside the image, as a drawn box is
        boxes.append({"label": label, "x": x0, "y": y0, "w": w, "h": h})
    return boxes


def label_loop(
    http: httpx.Client, project: int, *, loops: int | None, until: float | None, seed: int, boxes: bool = False
) -> Outcome:
    """next + submit (a label, or boxes in a detection project), ``loops`` times or until the perf_counter
    deadline ``until``."""
    rng = random.Random(seed)
    out = Outcome()
    done = 0
    while (loops is None or done < loops) and (until is None or time.perf_counter() < until):
        start = time.perf_counter()
        task = http.get(f"/api/v1/projects/{project}/tasks/next")
        out.timings.next_ms.append((time.perf_counter() - start) * 1000)
        if task.status_code == 204:
            out.drained = True
            return out
        if task.status_code != 200:
            out.unexpected.append(f"next {task.status_code}: {task.text[:300]}")
            continue
        image_id, width, height = task.json()["image_id"], task.json()["width"], task.json()["height"]
        answer = (
            {"boxes": boxes_answer(rng, image_id=image_id, width=width, height=height)}
            if boxes
            else {"label": rng.choice(LABELS)}
        )
        body = {"image_id": image_id, **answer, "duration_ms": rng.randrange(500, 4000)}
        start = time.perf_counter()
        sent = http.post(
            f"/api/v1/projects/{project}/annotations", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        out.timings.submit_ms.append((time.perf_counter() - start) * 1000)
        if sent.status_code == 201:
            out.acknowledged.add(sent.json()["id"])
        else:
            out.unexpected.append(f"submit {sent.status_code}: {sent.text[:300]}")
        done += 1
    return out


def concurrent_run(
    server: Server, project: int, annotators: list[tuple[int, str]], seconds: float
) -> tuple[set[int], list[Outcome], float, float]:
    """All annotators at once for ``seconds``.

    Returns the warm-up's labels, the timed outcomes, the wall time, and the cores the server process
    kept busy meanwhile (about 1.0 means one Python process is the bottleneck).
    """
    server_process = psutil.Process(server.process.pid)
    warm: set[int] = set()
    outcomes: list[Outcome] = [Outcome() for _ in annotators]
    clients = [client(server, token) for _, token in annotators]
    try:
        for i, http in enumerate(clients):  # open every connection and warm the server up
            warm |= label_loop(http, project, loops=3, until=None, seed=i).acknowledged
        barrier = threading.Barrier(len(clients) + 1)
        deadline: list[float] = []

        def work(i: int) -> None:
            barrier.wait()
            outcomes[i] = label_loop(clients[i], project, loops=None, until=deadline[0], seed=100 + i)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
        for thread in threads:
            thread.start()
        cpu_before = sum(server_process.cpu_times()[:2])
        start = time.perf_counter()
        deadline.append(start + seconds)
        barrier.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        server_cpu = (sum(server_process.cpu_times()[:2]) - cpu_before) / elapsed
    finally:
        for http in clients:
            http.close()
    return warm, outcomes, elapsed, server_cpu


# --- measurements -------------------------------------------------------------------------------


@dataclass
class PoolResult:
    size: int
    insert_seconds: float
    timings: Timings


@dataclass
class DatabaseResult:
    name: str
    sequential: Timings
    concurrent: Timings
    concurrent_labels: int
    concurrent_seconds: float
    server_cpu: float  # cores the server process kept busy during the concurrent phase
    drained: bool
    unexpected: list[str]
    check: CountCheck
    pools: list[PoolResult]
    detection: Timings
    detection_third: Timings  # the third of three annotators' answers on overlapped images

    @property
    def rate(self) -> float:
        return self.concurrent_labels / self.concurrent_seconds


def measure(name: str, url: str, plan: Plan, tmp: Path) -> DatabaseResult:
    upgrade(url)
    with serving(tmp, url) as server, client(server, server.admin_token) as admin:
        annotators = create_annotators(admin, ANNOTATORS)
        project = create_project(admin, "concurrent", CONCURRENT_SETTINGS, [a for a, _ in annotators])
        images = max(20_000, int(plan.seconds * 800))
        took = insert_images(url, project_id=project, count=images, settings=CONCURRENT_SETTINGS, seed=1)
        print(f"[{name}] inserted {images:,} waiting images in {took:.1f} s")

        with client(server, annotators[0][1]) as http:
            acknowledged = label_loop(http, project, loops=WARMUP_LOOPS, until=None, seed=0).acknowledged
            sequential = label_loop(http, project, loops=SEQUENTIAL_LOOPS, until=None, seed=1)
        acknowledged |= sequential.acknowledged
        print(
            f"[{name}] one annotator, {SEQUENTIAL_LOOPS} loops: next {spread(sequential.timings.next_ms)}, "
            f"submit {spread(sequential.timings.submit_ms)}"
        )

        warm, outcomes, elapsed, server_cpu = concurrent_run(server, project, annotators, plan.seconds)
        timed = Timings()
        for outcome in outcomes:
            timed.extend(outcome.timings)
        labels = sum(len(o.acknowledged) for o in outcomes)
        acknowledged |= warm.union(*(o.acknowledged for o in outcomes))
        unexpected = sequential.unexpected + [u for o in outcomes for u in o.unexpected]
        print(
            f"[{name}] {ANNOTATORS} annotators, {elapsed:.1f} s: {labels / elapsed:,.0f} labels/s, "
            f"next {spread(timed.next_ms)}, submit {spread(timed.submit_ms)}, server CPU {server_cpu:.2f} cores, "
            f"unexpected answers {len(unexpected)}"
        )
        check = count_check(url, project_id=project, acknowledged=acknowledged)
        print(f"[{name}] count check: {check}")

        pools = measure_pools(name, url, server, admin, annotators[0], plan.pools)
        detection, detection_third = measure_detection(name, url, server, admin, annotators)
    return DatabaseResult(
        name=name,
        sequential=sequential.timings,
        concurrent=timed,
        concurrent_labels=labels,
        concurrent_seconds=elapsed,
        server_cpu=server_cpu,
        drained=any(o.drained for o in outcomes),
        unexpected=unexpected,
        check=check,
        pools=pools,
        detection=detection,
        detection_third=detection_third,
    )


def measure_detection(
    name: str, url: str, server: Server, admin: httpx.Client, annotators: list[tuple[int, str]]
) -> tuple[Timings, Timings]:
    """One annotator answering with ``BOXES_PER_ANSWER`` boxes per image in a detection project; then three
    annotators answering the same images one after the other, the third one's answers timed (each merges three
    answers into consensus boxes)."""
    project = create_project(admin, "boxes", POOL_SETTINGS, [annotators[0][0]], task_type="detection")
    count = WARMUP_LOOPS + SEQUENTIAL_LOOPS + 100
    insert_images(url, project_id=project, count=count, settings=POOL_SETTINGS, seed=7, size=(640, 480))
    with client(server, annotators[0][1]) as http:
        label_loop(http, project, loops=WARMUP_LOOPS, until=None, seed=7, boxes=True)
        alone = label_loop(http, project, loops=SEQUENTIAL_LOOPS, until=None, seed=8, boxes=True)
    overlap = {**POOL_SETTINGS, "overlap_rate": 1.0, "overlap_k": 3}
    three = annotators[:3]
    project = create_project(admin, "boxes-k3", overlap, [a for a, _ in three], task_type="detection")
    insert_images(url, project_id=project, count=POOL_LOOPS, settings=overlap, seed=9, size=(640, 480))
    for i, (_, token) in enumerate(three):
        with client(server, token) as http:
            third = label_loop(http, project, loops=POOL_LOOPS, until=None, seed=10 + i, boxes=True)
    for outcome in (alone, third):
        if outcome.unexpected:
            raise RuntimeError(f"detection: unexpected answers {outcome.unexpected[:3]}")
    print(
        f"[{name}] detection, {BOXES_PER_ANSWER} boxes per answer, {SEQUENTIAL_LOOPS} loops: "
        f"next {spread(alone.timings.next_ms)}, submit {spread(alone.timings.submit_ms)}; third of three "
        f"annotators, {POOL_LOOPS} loops: submit {spread(third.timings.submit_ms)}"
    )
    return alone.timings, third.timings


def measure_pools(
    name: str, url: str, server: Server, admin: httpx.Client, annotator: tuple[int, str], sizes: tuple[int, ...]
) -> list[PoolResult]:
    """Grow one project's waiting pool to each size and time next + submit loops at that size."""
    project = create_project(admin, "pool", POOL_SETTINGS, [annotator[0]])
    results = []
    waiting = 0
    with client(server, annotator[1]) as http:
        for size in sizes:
            took = insert_images(url, project_id=project, count=size - waiting, settings=POOL_SETTINGS, seed=size)
            waiting = size
            label_loop(http, project, loops=WARMUP_LOOPS, until=None, seed=size)
            outcome = label_loop(http, project, loops=POOL_LOOPS, until=None, seed=size + 1)
            waiting -= WARMUP_LOOPS + POOL_LOOPS
            if outcome.unexpected:
                raise RuntimeError(f"pool of {size:,}: unexpected answers {outcome.unexpected[:3]}")
            results.append(PoolResult(size, took, outcome.timings))
            print(
                f"[{name}] pool {size:>9,} (inserted in {took:.1f} s): next {spread(outcome.timings.next_ms)}, "
                f"submit {spread(outcome.timings.submit_ms)}"
            )
    return results


# --- report -------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_summary(results: list[DatabaseResult], plan: Plan) -> None:
    print()
    print(
        f"machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; {ANNOTATORS} annotators for {plan.seconds:.0f} s"
    )
    header = ("measure", "Label Studio 1.23.2", "target", *(r.name for r in results))
    rows: list[tuple[str, ...]] = []

    def row(measure: str, reference: str, target: str, cells: list[tuple[str, bool | None]]) -> None:
        shown = [f"{value} {verdict(ok)}" if ok is not None else value for value, ok in cells]
        rows.append((measure, reference, target, *shown))

    row(
        "one annotator: submit p50 / p99",
        "128 / 165 ms",
        f"p99 <= {TARGET_SUBMIT_P99_MS} ms",
        [(spread(r.sequential.submit_ms), p99(r.sequential.submit_ms) <= TARGET_SUBMIT_P99_MS) for r in results],
    )
    row(
        "one annotator: next task p50 / p99",
        "84 ms p50",
        f"p99 <= {TARGET_NEXT_P99_MS} ms",
        [(spread(r.sequential.next_ms), p99(r.sequential.next_ms) <= TARGET_NEXT_P99_MS) for r in results],
    )
    sqlite_rate = results[0].rate
    row(
        f"{ANNOTATORS} at once: labels/s",
        "10.6 (8 annotators)",
        f">= {TARGET_CONCURRENT_RATE}; PG >= SQLite",
        [
            (f"{r.rate:,.0f}", r.rate >= TARGET_CONCURRENT_RATE and (i == 0 or r.rate >= sqlite_rate))
            for i, r in enumerate(results)
        ],
    )
    row(
        f"{ANNOTATORS} at once: submit p50 / p99",
        "p99 1,660 ms",
        f"p99 <= {TARGET_CONCURRENT_P99_MS} ms",
        [(spread(r.concurrent.submit_ms), p99(r.concurrent.submit_ms) <= TARGET_CONCURRENT_P99_MS) for r in results],
    )
    row(
        f"{ANNOTATORS} at once: next task p50 / p99",
        "",
        "(for information)",
        [(spread(r.concurrent.next_ms), None) for r in results],
    )
    row(
        f"{ANNOTATORS} at once: server process CPU",
        "",
        "(for information)",
        [(f"{r.server_cpu:.2f} cores", None) for r in results],
    )
    row(
        "count check: acknowledged = stored, no doubles",
        "",
        "exact",
        [(f"{r.check.acknowledged:,} = {r.check.stored:,}", r.check.ok and not r.unexpected) for r in results],
    )
    sizes = [p.size for p in results[0].pools]
    for i, size in enumerate(sizes):
        row(
            f"next task p50 / p99, {size:,} waiting",
            "",
            f"p99 <= {TARGET_NEXT_P99_MS} ms",
            [
                (spread(r.pools[i].timings.next_ms), p99(r.pools[i].timings.next_ms) <= TARGET_NEXT_P99_MS)
                for r in results
            ],
        )
    if len(sizes) > 1:

        def ratio(r: DatabaseResult) -> float:
            return p50(r.pools[-1].timings.next_ms) / p50(r.pools[0].timings.next_ms)

        row(
            f"next task p50 ratio {sizes[-1]:,} / {sizes[0]:,}",
            "",
            f"<= {TARGET_FLAT_RATIO} (flat)",
            [(f"{ratio(r):.2f}", ratio(r) <= TARGET_FLAT_RATIO) for r in results],
        )
    row(
        f"detection, {BOXES_PER_ANSWER} boxes: submit p50 / p99",
        "",
        f"p99 <= {TARGET_BOX_SUBMIT_P99_MS} ms",
        [(spread(r.detection.submit_ms), p99(r.detection.submit_ms) <= TARGET_BOX_SUBMIT_P99_MS) for r in results],
    )

    row(
        "detection, third of 3 annotators: submit p50 / p99",
        "",
        "(for information)",
        [(spread(r.detection_third.submit_ms), None) for r in results],
    )

    def next_ratio(r: DatabaseResult) -> float:
        return p99(r.detection.next_ms) / p99(r.sequential.next_ms)

    row(
        "detection: next task p99 / classification's",
        "",
        f"p99 <= {TARGET_NEXT_P99_MS} ms",
        [
            (f"{spread(r.detection.next_ms)} ({next_ratio(r):.2f}x)", p99(r.detection.next_ms) <= TARGET_NEXT_P99_MS)
            for r in results
        ],
    )
    widths = [max(len(line[c]) for line in [header, *rows]) for c in range(len(header))]
    for line in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    for r in results:
        if r.unexpected:
            print(f"{r.name}: {len(r.unexpected)} unexpected answers, e.g. {r.unexpected[:3]}")
        if r.drained:
            print(f"{r.name}: an annotator got 204 during the concurrent run: the pool was too small for the rate")


# --- run ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 s concurrent phase, 10k and 100k pools only")
    parser.add_argument("--seconds", type=float, help="length of the concurrent phase (default 60, quick 10)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan = Plan(seconds=args.seconds, pools=plan.pools)
    tmp = Path(tempfile.mkdtemp(prefix="labelwheel-bench-"))
    results = []
    try:
        results.append(measure("SQLite", f"sqlite:///{tmp / 'sqlite' / 'labelwheel.db'}", plan, tmp / "sqlite"))
        with postgres_database() as url:
            if url is not None:
                results.append(measure("PostgreSQL", url, plan, tmp / "postgres"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_summary(results, plan)


if __name__ == "__main__":
    main()
