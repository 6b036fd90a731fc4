"""Export benchmark: 100k annotations streamed over HTTP, and what other requests feel meanwhile.

One run, against the real server (``labelwheel serve``) on a temporary SQLite database:

* 20,000 labeled images x 5 annotators = 100,000 current annotations, bulk-inserted with
  SQLAlchemy (consensus set by majority vote, as submissions would leave it);
* the streamed ``labelstudio`` and ``csv`` exports, wall time to the last byte, median of 3
  (target: 100k annotations in <= 5 s);
* ``GET /api/v1/projects/{id}/progress`` latency, p50 and p99, from another thread while exports
  run, against the same requests on an idle server, and the ratio (target: the export never blocks
  other requests; read here as p99 during export <= 2 x idle p99, the bound TARGETS.md sets for
  labeling during training).

Run ``.venv/bin/python bench/export.py`` (``--quick`` for 2,000 images).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
from _rows import image_row
from sqlalchemy import insert

from annotation.consensus import majority_vote
from service.launcher import running_server
from storage.db import Database
from storage.ingest import split_for
from storage.migrate import upgrade
from storage.models import Annotation, AnnotationOrigin, Image, Project, Role, User, utcnow
from storage.projects import validate_settings
from storage.users import hash_token

ANNOTATORS = 5
LABELS = [str(d) for d in range(10)]
RUNS = 3
TARGET_SECONDS = 5.0
TARGET_P99_RATIO = 2.0
IDLE_SECONDS = 3.0


def populate(url: str, images: int, seed: int = 0) -> int:
    """Insert a project, its annotators, ``images`` labeled images and 5 current annotations each."""
    rng = random.Random(seed)
    db = Database(url)
    now = utcnow()
    with db.session() as session:
        project = Project(
            name="bench-export", labels=LABELS, settings=validate_settings({"overlap_k": ANNOTATORS}, labels=LABELS)
        )
        session.add(project)
        users = [User(name=f"annotator{i}", role=Role.annotator, token_hash=hash_token(f"t{i}")) for i in range(5)]
        session.add_all(users)
        session.flush()
        project_id, user_ids = project.id, [u.id for u in users]
    for start in range(0, images, 5000):
        image_rows, votes = [], []
        for n in range(start, min(start + 5000, images)):
            sha = f"{n:016x}{rng.getrandbits(192):048x}"
            truth = rng.choice(LABELS)
            labels = [truth if rng.random() < 0.8 else rng.choice(LABELS) for _ in user_ids]
            vote = majority_vote(labels, LABELS)
            votes.append(labels)
            image_rows.append(
                image_row(
                    project_id,
                    sha,
                    split=split_for(sha),
                    original_name=f"digits/{n:06d}.png",
                    labels_needed=ANNOTATORS,
                    label_count=ANNOTATORS,
                    queue_tier=None,
                    priority=rng.random(),
                    consensus_label=vote.label,
                    consensus_tie=vote.tie,
                    created_at=now,
                )
            )
        with db.session() as session:
            ids = list(session.scalars(insert(Image).returning(Image.id, sort_by_parameter_order=True), image_rows))
            session.execute(
                insert(Annotation),
                [
                    {
                        "project_id": project_id,
                        "image_id": image_id,
                        "annotator_id": user_id,
                        "label": label,
                        "duration_ms": rng.randrange(500, 5000),
                        "origin": AnnotationOrigin.human,
                        "is_current": True,
                        "created_at": now,
                    }
                    for image_id, labels in zip(ids, votes, strict=True)
                    for user_id, label in zip(user_ids, labels, strict=True)
                ],
            )
    db.dispose()
    return project_id


def timed_export(client: httpx.Client, project_id: int, fmt: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with client.stream("GET", f"/api/v1/projects/{project_id}/export", params={"format": fmt}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"export {fmt} answered {response.status_code}: {response.read()[:500]!r}")
        body = b"".join(response.iter_bytes())
    return time.perf_counter() - started, body


def check(fmt: str, body: bytes, images: int) -> int:
    """The number of annotations in the export, after checking it holds every labeled image."""
    if fmt == "csv":
        rows = body.decode().splitlines()
        assert len(rows) == images + 1, f"csv has {len(rows) - 1} rows, expected {images}"
        return images * ANNOTATORS
    tasks = json.loads(body)
    assert len(tasks) == images, f"{fmt} has {len(tasks)} tasks, expected {images}"
    return sum(len(t["annotations"]) for t in tasks)


def probe(base: str, headers: dict[str, str], url: str, ready: Event, stop: Event, out: Queue) -> None:
    """Sequential GETs of ``url`` until ``stop``, from a process of its own: the latencies, in seconds.

    A separate process, so the benchmark's own download of the export competes with the probe for
    CPU only, as another client would, and not for this interpreter's GIL.
    """
    samples: list[float] = []
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        for _ in range(20):  # warm-up: connection, first-request costs
            client.get(url)
        ready.set()
        while not stop.is_set():
            started = time.perf_counter()
            response = client.get(url)
            samples.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"GET {url} answered {response.status_code}")
    out.put(samples)


def probed(base: str, headers: dict[str, str], url: str, action: Callable[[], None]) -> list[float]:
    """Latencies of ``url`` measured from another process while ``action`` runs."""
    context = multiprocessing.get_context("spawn")
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    prober = context.Process(target=probe, args=(base, headers, url, ready, stop, out))
    prober.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the probe process did not start")
        action()
    finally:
        stop.set()
    samples = out.get(timeout=60)
    prober.join(timeout=30)
    return samples


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def verdict(ok: bool, target: str) -> str:
    return f"{'PASS' if ok else 'MISS'} ({target})"


def run(tmp: Path, images: int) -> None:
    data_dir = tmp / "data"
    data_dir.mkdir()
    url = f"sqlite:///{data_dir / 'labelwheel.db'}"
    upgrade(url)
    started = time.perf_counter()
    project_id = populate(url, images)
    took = time.perf_counter() - started
    print(f"inserted {images:,} images and {images * ANNOTATORS:,} annotations in {took:.1f} s")

    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(data_dir),
        "LABELWHEEL_ADMIN_TOKEN": token,
        "LABELWHEEL_LOG_LEVEL": "WARNING",
        "LABELWHEEL_EMBEDDED_WORKER": "false",  # the API alone, as measured before the flywheel existed
    }
    env.pop("LABELWHEEL_DATABASE_URL", None)
    headers = {"Authorization": f"Bearer {token}"}
    progress_url = f"/api/v1/projects/{project_id}/progress"
    with (
        running_server(env, tmp / "server.log") as (_, base),
        httpx.Client(base_url=base, headers=headers, timeout=120) as exporter,
    ):
        idle = probed(base, headers, progress_url, lambda: time.sleep(IDLE_SECONDS))

        seconds: dict[str, list[float]] = {"labelstudio": [], "csv": []}
        during: list[float] = []
        for fmt in seconds:
            for attempt in range(RUNS):
                result: list[tuple[float, bytes]] = []

                def download(f: str = fmt, r: list = result) -> None:
                    r.append(timed_export(exporter, project_id, f))

                probe_samples = probed(base, headers, progress_url, download)
                elapsed, body = result[0]
                annotations = check(fmt, body, images)
                seconds[fmt].append(elapsed)
                during.extend(probe_samples)
                print(
                    f"{fmt} export {attempt + 1}: {elapsed:.2f} s, {len(body) / 1e6:.1f} MB, "
                    f"{annotations:,} annotations; {len(probe_samples)} progress requests meanwhile"
                )
        idle_after = probed(base, headers, progress_url, lambda: time.sleep(IDLE_SECONDS))

    idle_all = idle + idle_after
    ratio = p(during, 0.99) / p(idle_all, 0.99)
    rows = [
        (f"labelstudio export, {images * ANNOTATORS:,} annotations, median of {RUNS}", seconds["labelstudio"]),
        (f"csv export, {images:,} rows, median of {RUNS}", seconds["csv"]),
    ]
    print()
    print(f"machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, Python {platform.python_version()}")
    for name, values in rows:
        median = statistics.median(values)
        print(f"{name:<58} {median:>8.2f} s  {verdict(median <= TARGET_SECONDS, f'<= {TARGET_SECONDS:.0f} s')}")
    print(f"{'progress p50 / p99, idle (' + str(len(idle_all)) + ' requests)':<58} "
          f"{p(idle_all, 0.5) * 1000:>6.1f} / {p(idle_all, 0.99) * 1000:.1f} ms")  # fmt: skip
    print(f"{'progress p50 / p99, during exports (' + str(len(during)) + ' requests)':<58} "
          f"{p(during, 0.5) * 1000:>6.1f} / {p(during, 0.99) * 1000:.1f} ms")  # fmt: skip
    bound = verdict(ratio <= TARGET_P99_RATIO, "<= 2, as for labeling during training")
    print(f"{'  p99 during / p99 idle':<58} {ratio:>8.2f}    {bound}")
    print(f"{'  slowest progress request during exports':<58} {max(during) * 1000:>6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images (10k annotations), for smoke checks")
    images = 2000 if parser.parse_args().quick else 20_000
    tmp = Path(tempfile.mkdtemp(prefix="labelwheel-bench-export-"))
    try:
        run(tmp, images)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
