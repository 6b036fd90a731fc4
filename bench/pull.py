"""Pull benchmark: what the Python client costs an ML engineer over the floor of the machine.

Set up once (not timed), in a temporary data directory: a project of 20,000 distinct PNGs (64x64 RGB noise,
about 12 KB each) stored as ``labelwheel import`` stores them, each given a label in the database (the consensus a
crowd would have reached), one dataset snapshot of them all, and a champion (a small CNN at 32 px with random
weights: weights do not change what a prediction costs). Then, against a real ``labelwheel serve`` (the API
process alone, SQLite, local files):

* **copy**: every image of the snapshot copied from the blob store to ``<split>/<label>/<id>.png`` with
  ``shutil.copyfile`` (no fsync: a download does not sync either), files/s;
* **pull**: ``Client.pull_dataset(snapshot, out, format="imagefolder")``: the same files through the service (the
  streamed zip) and the client, each checked against its sha256, plus ``labels.csv``; files/s and its ratio to the
  copy (target >= 0.5);
* **predict**: 1,000 of the images in requests of 100, by ``Client.predict`` (file paths) and by httpx posting the
  same files to ``/predict`` (raw), request by request in pairs; images/s from the median request, and the
  client's ratio to raw (target >= 0.9).

Rounds alternate the order (copy then pull, pull then copy; in each predict pair, raw or client first), each copy
or pull starting after an ``os.sync()`` so that none pays for the writes of the one before; medians are reported.
Everything lives in a temporary directory, removed at the end.

Run ``./dev bench pull`` (``--quick`` for 2,000 images).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from service.client import Client
from service.launcher import running_server

ADMIN_TOKEN = "bench-pull-admin-token-0123456789"
LABELS = [str(d) for d in range(10)]
INPUT_SIZE = 32
SIDE = 64
PREDICT_IMAGES = 1000
PREDICT_BATCH = 100
TARGET_PULL_RATIO = 0.5
TARGET_PREDICT_RATIO = 0.9


def write_images(folder: Path, count: int) -> None:
    """``count`` distinct noise PNGs, named by their label (the digit of their index)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(buffer, format="PNG")
        (folder / f"{i % 10}-{i:06d}.png").write_bytes(buffer.getvalue())


def make_project(data: Path, images: Path) -> tuple[int, int]:
    """Ingest the images, label them, freeze a snapshot and add a champion; the project's and snapshot's ids."""
    from sqlalchemy import select

    from flywheel.serving.heads import head_bytes
    from flywheel.training.architectures import build_model
    from flywheel.training.artefacts import checkpoint_bytes, head_arrays
    from flywheel.training.onnx_export import export_onnx, onnx_metadata
    from flywheel.training.snapshots import build_snapshot
    from storage.blobs import LocalBlobStore
    from storage.db import Database
    from storage.ingest import Ingestor, Limits, candidates_from_folder
    from storage.migrate import upgrade
    from storage.models import Image as ImageRow
    from storage.models import ModelKind, ModelStatus, ModelVersion, Project
    from storage.projects import create_project
    from storage.settings import load_settings

    url = f"sqlite:///{data / 'labelwheel.db'}"
    upgrade(url)
    db, blobs = Database(url), LocalBlobStore(data / "blobs")
    with db.session() as session:
        project_id = create_project(session, name="pull", labels=LABELS, settings={}).id
    candidates = candidates_from_folder(images)
    limits = dataclasses.replace(Limits.from_settings(load_settings(data_dir=data)), max_files=len(candidates))
    Ingestor(db=db, blobs=blobs, limits=limits, workers=2).ingest(project_id, candidates)
    network = build_model("small_cnn", len(LABELS)).eval()
    with db.session() as session:
        for row in session.scalars(select(ImageRow).where(ImageRow.project_id == project_id)):
            row.consensus_label = row.original_name[0]  # the digit the file is named by
        snapshot = build_snapshot(session, blobs, project=session.get_one(Project, project_id))
        session.flush()
        model = ModelVersion(
            project_id=project_id,
            kind=ModelKind.full,
            status=ModelStatus.champion,
            architecture="small_cnn",
            input_size=INPUT_SIZE,
            labels=LABELS,
            hyperparameters={},
            seed=0,
            snapshot_id=snapshot.id,
        )
        session.add(model)
        session.flush()  # its id names it in the ONNX file's metadata
        model.weights_sha256 = blobs.put_bytes(checkpoint_bytes(network.state_dict(), model=model))
        model.head_sha256 = blobs.put_bytes(head_bytes(*head_arrays(network)))
        model.onnx_sha256 = blobs.put_bytes(export_onnx(network, INPUT_SIZE, metadata=onnx_metadata(model)))
        snapshot_id = snapshot.id
    db.dispose()
    return project_id, snapshot_id


def snapshot_items(data: Path, snapshot_id: int) -> list:
    from flywheel.training.snapshots import load_items
    from storage.blobs import LocalBlobStore
    from storage.db import Database
    from storage.models import DatasetSnapshot

    db = Database(f"sqlite:///{data / 'labelwheel.db'}")
    with db.read_session() as session:
        _, items = load_items(LocalBlobStore(data / "blobs"), session.get_one(DatasetSnapshot, snapshot_id))
    db.dispose()
    return items


def copy_blobs(data: Path, items: list, out: Path) -> int:
    """The floor: each snapshot image's blob copied to where the pull puts it."""
    from storage.blobs import LocalBlobStore

    blobs = LocalBlobStore(data / "blobs")
    made: set[Path] = set()
    for item in items:
        folder = out / item.split.value / item.label
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        shutil.copyfile(blobs.path(item.sha256), folder / f"{item.image_id}.png")
    return len(items)


def timed(work) -> tuple[float, object]:  # noqa: ANN001 - any callable
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def pull(base: str, snapshot_id: int, out: Path) -> int:
    with Client(base, ADMIN_TOKEN) as client:
        pulled = client.pull_dataset(snapshot_id, out)
    assert pulled.images == pulled.fetched
    return pulled.images


def predict_pairs(base: str, project_id: int, paths: list[Path]) -> tuple[list[float], list[float]]:
    """Seconds of each request of PREDICT_BATCH images, raw and by the client, sent in pairs (alternately first) so
    that both meet the same load; each reads its files, as a caller would."""
    raws, clients = [], []
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=600) as raw, Client(base, ADMIN_TOKEN) as client:

        def by_raw(batch: list[Path]) -> None:
            parts = [("files", (p.name, p.read_bytes())) for p in batch]
            response = raw.post(f"/api/v1/projects/{project_id}/predict", files=parts)
            response.raise_for_status()
            assert len(response.json()["predictions"]) == len(batch)

        def by_client(batch: list[Path]) -> None:
            assert len(client.predict(project_id, batch, batch_size=PREDICT_BATCH)) == len(batch)

        for number, start in enumerate(range(0, len(paths), PREDICT_BATCH)):
            batch = paths[start : start + PREDICT_BATCH]
            pair = [(raws, by_raw), (clients, by_client)]
            for times, send in pair if number % 2 else pair[::-1]:
                started = time.perf_counter()
                send(batch)
                times.append(time.perf_counter() - started)
    return raws, clients


def verdict(ratio: float, target: float) -> str:
    return f"{'PASS' if ratio >= target else 'MISS'} (>= {target})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images instead of 20,000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    count = 2000 if args.quick else 20000
    print(f"machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="labelwheel-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        started = time.perf_counter()
        write_images(tmp / "images", count)
        project_id, snapshot_id = make_project(data, tmp / "images")
        size = sum(p.stat().st_size for p in (tmp / "images").iterdir())
        print(f"set up {count:,} images ({size / 1e6:,.0f} MB) in {time.perf_counter() - started:.0f} s", flush=True)
        env = {
            **os.environ,
            "LABELWHEEL_DATA_DIR": str(data),
            "LABELWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
            "LABELWHEEL_LOG_LEVEL": "WARNING",
            "LABELWHEEL_EMBEDDED_WORKER": "false",
        }
        copies: list[float] = []
        pulls: list[float] = []
        raws: list[float] = []
        clients: list[float] = []
        items = snapshot_items(data, snapshot_id)
        predict_paths = sorted((tmp / "images").iterdir())[:PREDICT_IMAGES]
        with running_server(env, tmp / "server.log") as (_, base):
            predict_pairs(base, project_id, predict_paths[: 2 * PREDICT_BATCH])  # loads the model's ONNX session
            for round_ in range(1, args.rounds + 1):
                steps = [
                    (copies, lambda: copy_blobs(data, items, tmp / "copy"), tmp / "copy"),
                    (pulls, lambda: pull(base, snapshot_id, tmp / "pull"), tmp / "pull"),
                ]
                for times, work, out in steps if round_ % 2 else steps[::-1]:
                    os.sync()  # the writes of the step before are not this one's to flush
                    seconds, result = timed(work)
                    times.append(seconds)
                    assert result == count, (out, result)
                    shutil.rmtree(out)
                raw_times, client_times = predict_pairs(base, project_id, predict_paths)
                raws += raw_times
                clients += client_times
                print(
                    f"round {round_}: copy {copies[-1]:.2f} s, pull {pulls[-1]:.2f} s (ratio "
                    f"{copies[-1] / pulls[-1]:.2f}); predict {PREDICT_IMAGES} images: raw {sum(raw_times):.2f} s, "
                    f"client {sum(client_times):.2f} s",
                    flush=True,
                )
    copy_rate, pull_rate = count / statistics.median(copies), count / statistics.median(pulls)
    raw_rate, client_rate = PREDICT_BATCH / statistics.median(raws), PREDICT_BATCH / statistics.median(clients)
    print()
    print(f"{'measure':<44} {'median':>12}  ratio")
    print(f"{'copy blobs to imagefolder (floor)':<44} {copy_rate:>8,.0f} f/s")
    print(
        f"{'client pull_dataset, imagefolder':<44} {pull_rate:>8,.0f} f/s  {pull_rate / copy_rate:.2f} "
        f"{verdict(pull_rate / copy_rate, TARGET_PULL_RATIO)}"
    )
    print(f"{'predict, raw HTTP (httpx), 100 per request':<44} {raw_rate:>8,.0f} i/s")
    print(
        f"{'predict, Client.predict, 100 per request':<44} {client_rate:>8,.0f} i/s  {client_rate / raw_rate:.2f} "
        f"{verdict(client_rate / raw_rate, TARGET_PREDICT_RATIO)}"
    )


if __name__ == "__main__":
    main()
