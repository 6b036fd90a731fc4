"""Console benchmark: the API calls behind each console page, on a project of 100,000 images, 200 model versions and
50 annotators, against the same project with 10,000 images measured in the same run.

A real ``labelwheel serve`` on SQLite (uvicorn over loopback HTTP). The project, its users and members are made
through the API; the bulk rows (images with their labels and queue state, one current annotation per labeled
image spread over 30 days and 50 annotators, 3 per overlapped image, each with its submitted assignment, 200
dataset snapshots and trained versions with full metrics, 1,000 label issues, 300 jobs) are inserted directly.
Each page's calls are those ``service/static/console.js`` makes, each timed on its own and summed per round (the
browser sends most of them at once, so this is the slower reading); the thumbnails a page then loads (one small
blob each, the same at any size) are left out.

The console's counts are the sums of rows that triggers insert for every change (migration 0016); the worker's
minute upkeep folds them into one per item, done here once after the bulk rows, timed, as the upkeep would.
The Quality page reads stored reports (agreement, scorecards): after the rows are in, the ``quality_report`` job's
two steps (``compute_reports``, ``store_reports``) run here, timed, as the worker would run them; every timed call
must answer 200 (a 202 "still computing" would be no measurement).

Printed per page: median and p95 of the whole page's calls at both sizes, and the ratio of the medians (100k /
10k). Targets: p95 <= 200 ms per page at 100k images (PASS/FAIL); no page grows with the number of images beyond
noise (ratio well under 10, the growth of the pool; "flat" up to 2).

Run ``.venv/bin/python bench/console.py`` (``--quick``: 5 rounds per page instead of 20).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
from _rows import image_row
from sqlalchemy import insert, select

from annotation.quality_reports import compute_reports, store_reports
from service.launcher import running_server
from storage.db import Database, create_db_engine
from storage.migrate import upgrade
from storage.models import (
    Annotation,
    AnnotationOrigin,
    Assignment,
    AssignmentStatus,
    DatasetSnapshot,
    Image,
    Job,
    JobKind,
    JobStatus,
    LabelIssue,
    ModelKind,
    ModelStatus,
    ModelVersion,
    Project,
    Split,
    utcnow,
)
from storage.projects import compact_counts

LABELS = [str(d) for d in range(10)]
ANNOTATORS = 50
VERSIONS = 200
SIZES = (10_000, 100_000)
CHUNK = 10_000
TARGET_P95_MS = 200
FLAT_RATIO = 2.0


def metrics(rng: random.Random, test_items: int) -> dict:
    """A trained version's metrics as the training job stores them: per class, confusion, wrong test images."""
    confusion = [[rng.randint(0, 3) if i != j else rng.randint(20, 40) for j in range(10)] for i in range(10)]
    wrong = [
        {"image_id": rng.randint(1, 1000), "label": rng.choice(LABELS), "predicted": rng.choice(LABELS)}
        for _ in range(rng.randint(10, 60))
    ]
    per_class = {label: {"precision": rng.random(), "recall": rng.random(), "f1": rng.random()} for label in LABELS}
    return {
        "test_accuracy": rng.uniform(0.8, 0.99),
        "baseline_accuracy": 0.1,
        "baseline_label": "0",
        "per_class": per_class,
        "confusion_matrix": confusion,
        "wrong_test_images": wrong,
        "test_items": test_items,
        "history": [{"epoch": e, "loss": rng.random(), "dev_accuracy": rng.random()} for e in range(30)],
    }


def fill(url: str, *, project_id: int, annotator_ids: list[int], images: int, seed: int = 0) -> None:
    """Insert the bulk rows: 60% of the images labeled (5% of those by three annotators), each answer with the
    submitted assignment labeling leaves, 5% in review, the rest waiting; versions, snapshots, label issues and
    jobs."""
    rng = random.Random(seed)
    engine = create_db_engine(url)
    now = utcnow()
    with engine.begin() as connection:
        for offset in range(0, images, CHUNK):
            rows = []
            for i in range(offset, min(offset + CHUNK, images)):
                state = rng.random()
                labeled, overlapped = state < 0.6, state < 0.03
                rows.append(
                    image_row(
                        project_id,
                        rng.randbytes(32).hex(),
                        split=Split.test if rng.random() < 0.2 else Split.train,
                        original_name=f"bench/{i}.png",
                        labels_needed=3 if overlapped else 1,
                        label_count=(3 if overlapped else 1) if labeled else 0,
                        queue_tier=None if labeled else (1 if state < 0.65 else 0),
                        priority=rng.random(),
                        consensus_label=rng.choice(LABELS) if labeled else None,
                        consensus_tie=False,
                    )
                )
            connection.execute(insert(Image), rows)
        labeled = connection.execute(
            select(Image.id, Image.label_count, Image.consensus_label).where(
                Image.project_id == project_id, Image.label_count > 0
            )
        ).all()
        annotations, assignments = [], []
        for image_id, count, label in labeled:
            for annotator in rng.sample(annotator_ids, count):
                served = now - timedelta(days=rng.uniform(0, 30))
                assignments.append(
                    {
                        "project_id": project_id,
                        "image_id": image_id,
                        "annotator_id": annotator,
                        "status": AssignmentStatus.submitted,
                        "leased_at": served,
                        "expires_at": served,
                        "updated_at": served,
                    }
                )
                annotations.append(
                    {
                        "project_id": project_id,
                        "image_id": image_id,
                        "annotator_id": annotator,
                        "label": label if rng.random() < 0.9 else rng.choice(LABELS),
                        "origin": AnnotationOrigin.human,
                        "is_current": True,
                        "duration_ms": rng.randint(500, 5000),
                        "created_at": served,
                    }
                )
                if len(annotations) == CHUNK:
                    connection.execute(insert(Annotation), annotations)
                    connection.execute(insert(Assignment), assignments)
                    annotations, assignments = [], []
        if annotations:
            connection.execute(insert(Annotation), annotations)
            connection.execute(insert(Assignment), assignments)
        for v in range(VERSIONS):
            labels = 1000 + v * (len(labeled) - 1000) // VERSIONS
            frozen = {"project_id": project_id, "content_sha256": rng.randbytes(32).hex(), "item_count": labels}
            snapshot = connection.execute(
                insert(DatasetSnapshot).returning(DatasetSnapshot.id), {**frozen, "stats": {}}
            ).scalar_one()
            promoted = v % 3 == 0
            connection.execute(
                insert(ModelVersion),
                {
                    "project_id": project_id,
                    "snapshot_id": snapshot,
                    "kind": ModelKind.full,
                    "status": ModelStatus.champion if v == VERSIONS - 1 else ModelStatus.retired,
                    "architecture": "small_cnn",
                    "input_size": 16,
                    "labels": LABELS,
                    "hyperparameters": {"epochs": 15, "learning_rate": 0.003, "batch_size": 16, "seed": 0},
                    "metrics": metrics(rng, labels // 5),
                    "decision": {
                        "promote": promoted,
                        "rule": "not worse" if promoted else "below the champion",
                        "reason": "bench",
                        "p_value": rng.random(),
                        "promotions": [{"at": now.isoformat(), "by_user": None, "reason": "bench", "replaced": None}],
                    },
                    "finished_at": now,
                },
            )
        issues = [
            {
                "project_id": project_id,
                "image_id": image_id,
                "rank": rank,
                "given_label": label,
                "suggested_label": rng.choice(LABELS),
                "score": rng.random(),
            }
            for rank, (image_id, _, label) in enumerate(rng.sample(labeled, 1000), start=1)
        ]
        connection.execute(insert(LabelIssue), issues)
        jobs = [
            {
                "project_id": project_id,
                "kind": rng.choice([JobKind.train, JobKind.refresh, JobKind.mine]),
                "status": JobStatus.succeeded,
                "progress": 1.0,
                "message": "bench",
                "params": {},
                "started_at": now,
                "finished_at": now,
            }
            for _ in range(300)
        ]
        connection.execute(insert(Job), jobs)
    engine.dispose()


def pages(pid: int, champion: int) -> dict[str, list[str]]:
    """Each page's API calls, as console.js makes them."""
    project = f"/api/v1/projects/{pid}"
    common = ["/api/v1/users/me", project]
    return {
        "home": ["/api/v1/users/me", "/api/v1/projects", f"{project}/progress", f"{project}/models"],
        "overview": [*common, f"{project}/overview", f"{project}/jobs"],
        "models": [*common, f"{project}/learning-curve", f"/api/v1/models/{champion}"],
        "quality": [
            *common,
            f"{project}/agreement",
            f"{project}/annotators",
            f"{project}/consensus/weak?limit=50",
            f"{project}/label-issues?limit=100",
        ],
        "mining": [*common, f"{project}/queue?limit=20", f"{project}/schedules", f"{project}/jobs", "/openapi.json"],
        "people": [*common, f"{project}/members", "/openapi.json"],
        "monitoring": [*common, f"{project}/drift", f"{project}/deployments", f"{project}/predictions/per-day"],
    }


def fold_counts(url: str, project_id: int) -> tuple[int, float]:
    """The worker's minute upkeep folding the count rows the triggers inserted for the bulk rows: rows, seconds."""
    db = Database(url)
    start = time.perf_counter()
    with db.session() as session:
        folded = compact_counts(session, project_id=project_id)
    db.engine.dispose()
    return folded, time.perf_counter() - start


def quality_report_job(url: str, project_id: int) -> float:
    """The quality_report job's work, as the worker does it; its seconds."""
    db = Database(url)
    start = time.perf_counter()
    began = utcnow()
    with db.read_session() as session:
        computed = compute_reports(session, project=session.get_one(Project, project_id))
    with db.session() as session:
        store_reports(session, project_id=project_id, computed=computed, started=began)
    db.engine.dispose()
    return time.perf_counter() - start


def ok(response: httpx.Response) -> None:
    response.raise_for_status()
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}: {response.text[:200]}")


def timed(work: Callable[[], object], rounds: int) -> list[float]:
    work()  # warm up: the first call of each route imports and compiles
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(tmp: Path, images: int, rounds: int, medians: dict[str, float]) -> dict[str, list[float]]:
    """Each page's summed call times per round; ``medians`` gets each call's median (its path, ids left out)."""
    token = secrets.token_hex(16)
    data = tmp / f"data-{images}"
    url = f"sqlite:///{data / 'labelwheel.db'}"
    data.mkdir(parents=True)
    upgrade(url)
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(data),
        "LABELWHEEL_DATABASE_URL": url,
        "LABELWHEEL_ADMIN_TOKEN": token,
        "LABELWHEEL_LOG_LEVEL": "WARNING",
        "LABELWHEEL_EMBEDDED_WORKER": "false",
    }
    with running_server(env, tmp / f"server-{images}.log") as (_, base):
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        body = {"name": "digits", "labels": LABELS, "settings": {"gold_rate": 0.0}}
        pid = admin.post("/api/v1/projects", json=body).raise_for_status().json()["id"]
        annotators = []
        for n in range(ANNOTATORS):
            user = admin.post("/api/v1/users", json={"name": f"ann{n}", "role": "annotator"}).raise_for_status()
            annotators.append(user.json()["id"])
            admin.post(f"/api/v1/projects/{pid}/members", json={"user_id": annotators[-1]}).raise_for_status()
        start = time.perf_counter()
        fill(url, project_id=pid, annotator_ids=annotators, images=images)
        print(f"{images:,} images: rows inserted in {time.perf_counter() - start:.1f} s")  # noqa: T201
        folded, seconds = fold_counts(url, pid)
        print(f"  upkeep folded {folded:,} count rows in {seconds:.2f} s")  # noqa: T201
        seconds = quality_report_job(url, pid)
        print(f"  quality_report job (Dawid-Skene, kappas, alpha, scorecards): {seconds:.2f} s")  # noqa: T201
        champion = admin.get(f"/api/v1/projects/{pid}/models/champion").raise_for_status().json()["id"]
        results: dict[str, list[float]] = {}
        for page, calls in pages(pid, champion).items():
            per_call = {call: timed(lambda call=call: ok(admin.get(call)), rounds) for call in calls}
            results[page] = [sum(times) for times in zip(*per_call.values(), strict=True)]
            for call, times in per_call.items():
                medians[f"{page}: {re.sub(r'/[0-9]+', '/N', call)}"] = statistics.median(times)
            slowest = max(per_call, key=lambda call: statistics.median(per_call[call]))
            print(f"  {page}: slowest call {slowest} {statistics.median(per_call[slowest]):.1f} ms")  # noqa: T201
        admin.close()
    return results


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds per page instead of 20")
    args = parser.parse_args()
    rounds = 5 if args.quick else 20
    with tempfile.TemporaryDirectory(prefix="labelwheel-console-") as tmp:
        small_calls: dict[str, float] = {}
        large_calls: dict[str, float] = {}
        small = measure(Path(tmp), SIZES[0], rounds, small_calls)
        large = measure(Path(tmp), SIZES[1], rounds, large_calls)
    header = f"{'page':<10} {'10k p50':>9} {'10k p95':>9} {'100k p50':>9} {'100k p95':>9} {'ratio':>6}"
    print(f"\n{header}  p95 <= {TARGET_P95_MS} ms   growth")  # noqa: T201
    for page in large:
        a, b = statistics.median(small[page]), statistics.median(large[page])
        verdict = "PASS" if p95(large[page]) <= TARGET_P95_MS else "FAIL"
        growth = "flat" if b / a <= FLAT_RATIO else "grows"
        print(  # noqa: T201
            f"{page:<10} {a:9.1f} {p95(small[page]):9.1f} {b:9.1f} {p95(large[page]):9.1f} {b / a:6.2f}  "
            f"{verdict:<15} {growth}"
        )
    passed = sum(p95(large[page]) <= TARGET_P95_MS for page in large)
    print(f"aim p95 <= {TARGET_P95_MS} ms per page at 100k images: {passed}/{len(large)} pages PASS")  # noqa: T201
    print("(milliseconds for all of a page's API calls, one after another; ratio: 100k median / 10k median)")  # noqa: T201
    print(f"\ncalls whose median grows more than {FLAT_RATIO}x from 10k to 100k images:")  # noqa: T201
    for call, b in large_calls.items():
        a = small_calls[call]
        if b / a > FLAT_RATIO:
            print(f"  {call:<62} {a:7.1f} -> {b:7.1f} ms  ({b / a:.1f}x)")  # noqa: T201


if __name__ == "__main__":
    main()
