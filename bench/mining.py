"""Mining throughput and memory: the ``mine`` job's scoring against the model's own forward pass.

A project of N distinct 8 px digit PNGs (SQLite, local blob files) and a champion small CNN (32 px
input, the service's default for such images; its weights do not matter for speed). Measured:

* throughput: ``score_pool`` (the scoring step of a ``mine`` job: read ids in keyset batches, read
  and decode each file, run the backbone, apply the serving head, store embeddings and predictions)
  over a pool of 20,000 images, against ``embed_and_predict`` of the same model over the same images
  already decoded in memory (the limit); alternated, ``--repeats`` times each, medians; ratio target
  >= 0.7 (../shared/design/TARGETS.md);
* memory: the peak RSS of a whole mining pass (scoring, choosing, relabeling) in a fresh process,
  over 20,000 and over 100,000 images; target: no growth beyond noise (here: at most 5%).

Run ``./dev bench mining`` (``--repeats``, ``--small``, ``--large``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _rows import image_row
from PIL import Image as PILImage
from sklearn.datasets import load_digits
from sqlalchemy import delete, insert, select

from flywheel.serving.heads import head_bytes
from flywheel.serving.preprocess import to_array
from flywheel.training.architectures import build_model
from flywheel.training.artefacts import checkpoint_bytes, embed_and_predict, full_network, head_arrays
from flywheel.training.mining import mine, score_pool, serving_parts
from storage.blobs import LocalBlobStore
from storage.db import Database
from storage.ingest import shuffled_priority, split_for
from storage.migrate import upgrade
from storage.models import Embedding, Image, ModelKind, ModelStatus, ModelVersion, Prediction, QueueTier
from storage.projects import create_project

TARGET_RATIO, MEMORY_NOISE = 0.7, 0.05
LABELS = [str(d) for d in range(10)]
INPUT_SIZE = 32


def pngs(count: int) -> list[bytes]:
    """``count`` distinct PNGs: digits whose first five pixels carry the index in their low bits."""
    digits = (load_digits().images * 16).clip(0, 240).astype(np.uint8)
    out = []
    for k in range(count):
        pixels = digits[k % len(digits)].copy().reshape(-1)
        pixels[:5] += np.array([(k >> (4 * j)) & 15 for j in range(5)], dtype=np.uint8)
        buffer = io.BytesIO()
        PILImage.fromarray(pixels.reshape(8, 8), mode="L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def build(data: Path, small: int, large: int) -> tuple[dict[int, int], list[str]]:
    """Two projects (``small`` and ``large`` images) sharing one champion's files; returns {size: project id}."""
    url = f"sqlite:///{data / 'labelwheel.db'}"
    upgrade(url)
    db, blobs = Database(url), LocalBlobStore(data / "blobs")
    files = pngs(large)
    shas = []
    for content in files:  # written directly (no fsync): setting up, not measured
        sha = hashlib.sha256(content).hexdigest()
        path = blobs.path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        shas.append(sha)
    network = build_model("small_cnn", len(LABELS)).eval()
    projects = {}
    with db.session() as session:
        for size in (small, large):
            project = create_project(session, name=f"pool-{size}", labels=LABELS, settings={})
            session.flush()
            rows = [
                image_row(
                    project.id,
                    sha,
                    split=split_for(sha),
                    queue_tier=int(QueueTier.fresh),
                    priority=shuffled_priority(sha),
                    original_name=f"{k}.png",
                )
                for k, sha in enumerate(shas[:size])
            ]
            for start in range(0, len(rows), 10_000):
                session.execute(insert(Image), rows[start : start + 10_000])
            model = ModelVersion(
                project_id=project.id,
                kind=ModelKind.full,
                status=ModelStatus.champion,
                architecture="small_cnn",
                input_size=INPUT_SIZE,
                labels=LABELS,
                hyperparameters={},
                seed=0,
            )
            model.weights_sha256 = blobs.put_bytes(checkpoint_bytes(network.state_dict(), model=model))
            model.head_sha256 = blobs.put_bytes(head_bytes(*head_arrays(network)))
            session.add(model)
            projects[size] = project.id
    db.dispose()
    return projects, shas


def decode(blobs: LocalBlobStore, sha: str) -> np.ndarray:
    with blobs.open(sha) as stream, PILImage.open(stream) as image:
        return to_array(image, INPUT_SIZE)


def throughput(data: Path, project_id: int, shas: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Images/s of the limit (forward pass over decoded arrays) and of scoring, alternated."""
    db, blobs = Database(f"sqlite:///{data / 'labelwheel.db'}"), LocalBlobStore(data / "blobs")
    with db.read_session() as session:
        serving = serving_parts(session, project_id=project_id)
        count = len(session.scalars(select(Image.id).where(Image.project_id == project_id)).all())
    assert serving.backbone.weights_sha256 is not None
    network = full_network(blobs, serving.backbone.weights_sha256)
    decoded = np.stack([decode(blobs, sha) for sha in shas[:count]])
    embed_and_predict(network, decoded[:256])  # warm up
    limit, scoring = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        embed_and_predict(network, decoded)
        limit.append(count / (time.perf_counter() - started))
        with db.session() as session:  # a cold pool: nothing scored, no embedding cached
            session.execute(delete(Prediction))
            session.execute(delete(Embedding))
        started = time.perf_counter()
        done = score_pool(db, blobs, project_id=project_id, serving=serving)
        scoring.append(done.scored / (time.perf_counter() - started))
        assert done.scored == count, done
    db.dispose()
    return limit, scoring


def peak_memory_child(data: Path, project_id: int) -> None:
    """In a fresh process: one whole mining pass; prints the peak RSS in MB before and after it."""
    torch.set_num_threads(1)
    db, blobs = Database(f"sqlite:///{data / 'labelwheel.db'}"), LocalBlobStore(data / "blobs")
    with db.read_session() as session:
        serving = serving_parts(session, project_id=project_id)
    assert serving.backbone.weights_sha256 is not None
    full_network(blobs, serving.backbone.weights_sha256)  # loaded before the baseline is read
    before = peak_rss_mb()
    started = time.perf_counter()
    result = mine(db, blobs, project_id=project_id)
    seconds = time.perf_counter() - started
    after = peak_rss_mb()
    print(f"{before:.1f} {after:.1f} {result['scored']} {seconds:.1f}")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it does not inherit the parent's peak)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def peak_memory(data: Path, project_id: int) -> tuple[float, float, int, float]:
    """A mining pass over a cold pool (nothing scored, no embedding cached) in a fresh process."""
    db = Database(f"sqlite:///{data / 'labelwheel.db'}")
    with db.session() as session:
        session.execute(delete(Prediction))
        session.execute(delete(Embedding))
    db.dispose()
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(data), str(project_id)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    before, after, scored, seconds = output[-4:]
    return float(before), float(after), int(scored), float(seconds)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        peak_memory_child(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; small CNN, {INPUT_SIZE} px input, 1 torch thread")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        projects, shas = build(data, args.small, args.large)
        print(f"set up {args.large:,} distinct PNGs and two projects in {time.perf_counter() - started:.0f} s")

        limit, scoring = throughput(data, projects[args.small], shas, args.repeats)
        ratio = statistics.median(scoring) / statistics.median(limit)
        print(
            f"forward pass over {args.small:,} decoded images (the limit): median {statistics.median(limit):,.0f} "
            f"images/s ({', '.join(f'{v:,.0f}' for v in limit)})"
        )
        print(
            f"mining's scoring of the same {args.small:,} images from their files: median "
            f"{statistics.median(scoring):,.0f} images/s ({', '.join(f'{v:,.0f}' for v in scoring)})"
        )
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        print(f"scoring / forward pass: {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})")

        peaks = {}
        for size in (args.small, args.large):
            before, after, scored, seconds = peak_memory(data, projects[size])
            peaks[size] = after
            print(
                f"mining pass over {size:,} images in a fresh process: {scored:,} scored in {seconds:.0f} s; peak RSS "
                f"{before:.0f} MB before it (imports, model), {after:.0f} MB at its end"
            )
        growth = peaks[args.large] / peaks[args.small] - 1
        verdict = "PASS" if growth <= MEMORY_NOISE else "MISS"
        print(
            f"peak RSS, {args.large:,} vs {args.small:,} images: {growth:+.1%} "
            f"(target: no growth beyond noise, <= {MEMORY_NOISE:.0%}: {verdict})"
        )


if __name__ == "__main__":
    main()
