"""The Python client and the remote commands against one real `labelwheel serve` holding the suite's trained digits
project: a pulled ONNX model answering as /predict from its own metadata, a dataset pull that resumes after an
interruption, pushes, profiles, the local commands refusing a URL, errors and retries."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from PIL import Image, ImageOps
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.client import ApiError, Client
from service.launcher import free_port, running_server
from tests import imagefactory as img
from tests.digits import digits
from tests.test_detection import LABELS, box

CLIENT_VARIABLES = ("LABELWHEEL_URL", "LABELWHEEL_TOKEN", "LABELWHEEL_PROFILE")


@dataclass(frozen=True)
class Served:
    base: str
    admin: str
    engineer: str
    project: dict
    truth: dict[int, str]
    champion_id: int
    blobs: Path

    def client(self, token: str | None = None, **options) -> Client:
        return Client(self.base, token or self.engineer, **options)


@pytest.fixture(scope="module")
def served(trained_template, tmp_path_factory) -> Iterator[Served]:
    """The trained project served once for the whole module (API only: nothing trains meanwhile)."""
    template, made = trained_template
    root = tmp_path_factory.mktemp("served") / "trained"
    shutil.copytree(template, root)
    env = {name: value for name, value in os.environ.items() if name not in CLIENT_VARIABLES}
    env |= {
        "LABELWHEEL_DATA_DIR": str(root / "data"),
        "LABELWHEEL_DATABASE_URL": f"sqlite:///{root / 'labelwheel.db'}",
        "LABELWHEEL_EMBEDDED_WORKER": "false",
    }
    with running_server(env, root / "serve.log") as (_, base):
        yield Served(
            base,
            made["admin"].token,
            made["engineer"].token,
            made["project"],
            made["truth"],
            made["champion_id"],
            root / "data" / "blobs",
        )


def cli(args: list[str], tmp_path: Path, **env: str):
    """A command in this process, with its own (empty) folder of saved profiles."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), **dict.fromkeys(CLIENT_VARIABLES), **env}
    return CliRunner().invoke(cli_app, args, env=env)


def test_a_pulled_onnx_model_answers_as_predict_from_the_metadata_in_its_file(served, tmp_path):
    name = served.project["name"]
    pulled = cli(
        ["pull", "model", "--project", name, "--out", str(tmp_path / "model")],
        tmp_path,
        LABELWHEEL_URL=served.base,
        LABELWHEEL_TOKEN=served.engineer,
    )
    assert pulled.exit_code == 0, pulled.output
    (onnx_file,) = (tmp_path / "model").glob("*.onnx")
    card = json.loads(onnx_file.with_suffix(".json").read_text())
    assert card["id"] == served.champion_id and card["snapshot"]["id"] is not None
    assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == card["artefacts"]["onnx_sha256"]

    pngs, _ = digits()
    files = []
    for i in range(400, 412):  # never uploaded: predictions store nothing anyway
        files.append(tmp_path / f"digit-{i}.png")
        files[-1].write_bytes(pngs[i])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map  # the file alone: no card
    labels, size = json.loads(meta["labelwheel.labels"]), int(meta["labelwheel.input_size"])
    mean, std = np.array(json.loads(meta["labelwheel.mean"])), np.array(json.loads(meta["labelwheel.std"]))
    batch = []
    for path in files:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        batch.append(((np.asarray(upright, dtype=np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    (logits,) = session.run(["logits"], {"input": np.stack(batch).astype(np.float32)})
    local = np.exp(logits - logits.max(axis=1, keepdims=True))
    local /= local.sum(axis=1, keepdims=True)

    with served.client() as client:
        answers = client.predict(name, files)
        assert [(m.id, m.status) for m in client.models(name)] == [(served.champion_id, "champion")]
        with Image.open(files[0]) as image:
            in_memory = client.predict(name, [image, np.asarray(image)])  # a PIL image, an array: sent as PNG
    # batches of 2 and of 12 may round the last float bits differently
    assert [a.probabilities for a in in_memory] == [pytest.approx(answers[0].probabilities, abs=1e-6)] * 2
    assert {a.model_version for a in answers} == {meta["labelwheel.model_version"]}
    assert [a.label for a in answers] == [labels[i] for i in local.argmax(axis=1)]
    remote = np.array([[a.probabilities[label] for label in labels] for a in answers])
    np.testing.assert_allclose(remote, local, atol=1e-4)

    predicted = cli(
        ["predict", *map(str, files[:3]), "--project", name, "--url", served.base, "--token", served.engineer], tmp_path
    )
    assert predicted.exit_code == 0, predicted.output
    assert [line.split("\t")[:2] for line in predicted.stdout.splitlines()] == [
        [str(path), answer.label] for path, answer in zip(files[:3], answers, strict=False)
    ]


def test_an_interrupted_dataset_pull_resumes_and_fetches_only_what_is_missing_or_damaged(served, tmp_path):
    folder = tmp_path / "digits"
    with served.client() as client:
        snapshot = client.snapshot(client.champion(served.project["id"])["snapshot"]["id"])
        assert snapshot.item_count == 150

        def stop_after_40(done: int, total: int) -> None:
            if done == 40:
                raise KeyboardInterrupt  # Ctrl-C

        with pytest.raises(KeyboardInterrupt):
            client.pull_dataset(snapshot.id, folder, on_progress=stop_after_40)
        written = sorted(folder.glob("t*/*/*.png"), key=lambda p: int(p.stem))
        assert len(written) == 40
        written[3].write_bytes(b"damaged")
        written[5].unlink()

        pulled = client.pull_dataset(snapshot.id, folder)
        images = {image.id: image for image in client.images(served.project["id"])}
        current = {label.image_id: label.label for label in client.labels(served.project["id"])}
        archive = httpx.get(
            f"{served.base}/api/v1/snapshots/{snapshot.id}/archive",
            headers={"Authorization": f"Bearer {served.engineer}"},
        )
    assert (pulled.images, pulled.fetched) == (150, 110 + 2)
    assert pulled.labels == [str(d) for d in range(10)]
    with (folder / "labels.csv").open() as manifest:
        rows = list(csv.DictReader(manifest))
    assert len(rows) == 150 and {int(row["image_id"]) for row in rows} == set(current)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as unzipped:  # what any zip tool reads, from its directory
        assert unzipped.testzip() is None
        assert unzipped.namelist() == ["snapshot.json", "labels.csv", *(row["file_name"] for row in rows)]
    for row in rows:
        image = images[int(row["image_id"])]
        split, label, _ = row["file_name"].split("/")
        assert (split, label, row["label"]) == (image.split.value, current[image.id], served.truth[image.id])
        assert hashlib.sha256((folder / row["file_name"]).read_bytes()).hexdigest() == image.sha256
    from torchvision.datasets import ImageFolder

    train = ImageFolder(str(folder / "train"))
    assert len(train) == snapshot.stats["train"] and train.classes == sorted({r["label"] for r in rows})

    # The command line: the labels now make the same snapshot again, here as one images/ folder and labels.csv.
    again = cli(
        [
            "pull",
            "dataset",
            "--project",
            served.project["name"],
            "--snapshot",
            "new",
            "--format",
            "csv",
            "--out",
            str(tmp_path / "flat"),
            "--url",
            served.base,
            "--token",
            served.engineer,
        ],
        tmp_path,
    )
    assert again.exit_code == 0, again.output
    assert f"snapshot {snapshot.id} as csv: 150 images" in again.stdout
    assert len(list((tmp_path / "flat" / "images").iterdir())) == 150
    other = cli(
        [
            "pull",
            "dataset",
            "--project",
            served.project["name"],
            "--snapshot",
            str(snapshot.id),
            "--format",
            "imagefolder",
            "--out",
            str(tmp_path / "flat"),
            "--url",
            served.base,
            "--token",
            served.engineer,
        ],
        tmp_path,
    )
    assert other.exit_code == 1 and f"holds snapshot {snapshot.id} as csv" in other.stderr


def test_a_detection_snapshot_pulls_as_coco_and_as_yolo_with_the_boxes_as_drawn(served, tmp_path):
    """Boxes drawn through the API come back on the upright image in both layouts, read by pycocotools and as
    Ultralytics' files; a pull stopped early, with an annotation file lost since, resumes."""
    drawn = {
        "two.png": [box(x=1.5, y=2.25, w=10.5, h=8.0), box(label="person", x=20.0, y=0.0, w=19.75, h=29.5)],
        "empty.png": [],
        "turned.jpg": [box(label="person", x=2.0, y=35.0, w=15.0, h=24.0)],  # 60x20 stored, 20x60 upright
    }
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "two.png").write_bytes(img.png(40, 30, color=(1, 50, 90)))
    (photos / "empty.png").write_bytes(img.png(40, 30, color=(2, 50, 90)))
    (photos / "turned.jpg").write_bytes(img.jpeg_with_orientation(6, size=(60, 20)))
    admin_headers = {"Authorization": f"Bearer {served.admin}"}
    with served.client(served.admin) as admin:
        project = admin.create_project(
            f"boxes-{uuid.uuid4().hex[:6]}", LABELS, task_type="detection", settings={"gold_rate": 0, "overlap_rate": 0}
        )
        person = httpx.post(
            f"{served.base}/api/v1/users",
            json={"name": f"drawer-{project.id}", "role": "annotator"},
            headers=admin_headers,
        ).json()
        added = httpx.post(
            f"{served.base}/api/v1/projects/{project.id}/members", json={"user_id": person["id"]}, headers=admin_headers
        )
        assert added.status_code == 201, added.text
        uploaded = admin.upload(project, [photos])
        name_of = {Path(f.name).name: f.image_id for f in uploaded.files}
        with served.client(person["token"]) as annotator:
            while (task := annotator.next_task(project.id)) is not None:
                (name,) = [n for n, image_id in name_of.items() if image_id == task.image_id]
                annotator.annotate(project.id, task.image_id, boxes=drawn[name])
        snapshot = admin.create_snapshot(project)
        assert snapshot.item_count == 3

        with pytest.raises(ApiError) as refused:
            admin.pull_dataset(snapshot.id, tmp_path / "folders", format="imagefolder")
        assert (refused.value.status, refused.value.code) == (422, "format_not_for_project")
        assert "its archive formats are coco and yolo, not imagefolder" in refused.value.message

        def stop_after_1(done: int, total: int) -> None:
            if done == 1:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            admin.pull_dataset(snapshot.id, tmp_path / "coco", on_progress=stop_after_1)
        about = json.loads((tmp_path / "coco" / "snapshot.json").read_text())
        assert about["annotation_files"] == ["annotations/train.json", "annotations/test.json"]
        (tmp_path / "coco" / "annotations" / "test.json").unlink()
        coco = admin.pull_dataset(snapshot.id, tmp_path / "coco")
        yolo = admin.pull_dataset(snapshot.id, tmp_path / "yolo", format="yolo")
    assert (coco.format, coco.images, coco.fetched, coco.labels) == ("coco", 3, 2, LABELS)
    assert (yolo.format, yolo.images, yolo.fetched) == ("yolo", 3, 3)

    from pycocotools.coco import COCO

    expected = {
        name_of[name]: sorted((b["label"], b["x"], b["y"], b["w"], b["h"]) for b in boxes)
        for name, boxes in drawn.items()
    }
    found, sizes = {}, {}
    for split in ("train", "test"):
        document = COCO(str(tmp_path / "coco" / "annotations" / f"{split}.json"))
        names = {c["id"]: c["name"] for c in document.loadCats(document.getCatIds())}
        assert list(names.values()) == LABELS
        for picture in document.loadImgs(document.getImgIds()):
            stored = tmp_path / "coco" / split / picture["file_name"]
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == picture["sha256"]
            with Image.open(stored) as image:
                assert ImageOps.exif_transpose(image).size == (picture["width"], picture["height"])
            sizes[picture["id"]] = (picture["width"], picture["height"])
            anns = document.loadAnns(document.getAnnIds(imgIds=[picture["id"]]))
            found[picture["id"]] = sorted((names[a["category_id"]], *a["bbox"]) for a in anns)
    assert found == expected and sizes[name_of["turned.jpg"]] == (20, 60)

    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert (data["train"], data["val"], data["nc"], data["names"]) == ("images/train", "images/test", 2, LABELS)
    with (tmp_path / "yolo" / "labels.csv").open() as manifest:
        rows = list(csv.DictReader(manifest))
    for row in rows:
        image_id, (width, height) = int(row["image_id"]), sizes[int(row["image_id"])]
        picture = tmp_path / "yolo" / row["file_name"]
        assert hashlib.sha256(picture.read_bytes()).hexdigest() == row["sha256"]
        label_file = tmp_path / "yolo" / "labels" / row["split"] / f"{picture.stem}.txt"
        lines = [line.split() for line in label_file.read_text().splitlines()]
        assert int(row["boxes"]) == len(lines) == len(expected[image_id])
        back = sorted(
            (
                LABELS[int(k)],
                (float(cx) - float(w) / 2) * width,
                (float(cy) - float(h) / 2) * height,
                float(w) * width,
                float(h) * height,
            )
            for k, cx, cy, w, h in lines
        )
        for got, want in zip(back, expected[image_id], strict=True):
            assert got[0] == want[0] and got[1:] == pytest.approx(want[1:], abs=1e-3)

    classes = cli(
        ["pull", "dataset", "--project", served.project["name"], "--format", "coco", "--out", str(tmp_path / "no")],
        tmp_path,
        LABELWHEEL_URL=served.base,
        LABELWHEEL_TOKEN=served.engineer,
    )
    assert classes.exit_code == 1 and "its archive formats are imagefolder and csv, not coco" in classes.stderr


def test_push_saved_profiles_and_which_commands_reach_a_server(served, tmp_path):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for i in range(3):
        (folder / "more" / f"{i}.png").write_bytes(img.png(color=(i, 99, 7)))
    (folder / "notes.txt").write_text("not an image")
    name = served.project["name"]

    nowhere = cli(["push", str(folder), "--project", name], tmp_path)
    assert nowhere.exit_code == 2 and "pass --url and --token" in nowhere.stderr
    login = cli(["login", "--url", served.base, "--token", served.engineer], tmp_path)
    assert login.exit_code == 0 and "as eng (engineer)" in login.stdout, login.output
    for outcome in ("3 accepted, 0 duplicate, 1 rejected", "0 accepted, 3 duplicate, 1 rejected"):
        pushed = cli(["push", str(folder), "--project", name], tmp_path)  # the saved profile
        assert pushed.exit_code == 0 and pushed.stdout.strip() == outcome, pushed.output
    assert "notes.txt" in pushed.stderr

    local = cli(["users", "list"], tmp_path, LABELWHEEL_URL=served.base)
    assert local.exit_code == 2
    assert "works on this machine's database and files, not on a server" in local.stderr


def test_errors_carry_the_api_code_and_message(served, tmp_path):
    with Client(served.base, "not-a-token") as stranger, pytest.raises(ApiError) as refused:
        stranger.projects()
    assert (refused.value.status, refused.value.code) == (401, "invalid_token")
    with served.client(served.admin) as client:
        with pytest.raises(ApiError) as missing:
            client.snapshot(999_999)
        assert (missing.value.status, missing.value.code) == (404, "snapshot_not_found")

        # Nothing runs jobs in this server: one started stays queued until cancelled.
        queued = client.start_job(served.project["id"], "mine")
        assert queued.status == "queued"
        assert client.cancel_job(queued.id).status == "cancelled"
        seen = []
        assert client.wait(queued.id, on_progress=seen.append).status == "cancelled" and len(seen) == 1
        with pytest.raises(ApiError) as finished:
            client.cancel_job(queued.id)
        assert finished.value.status == 409
        assert client.agreement(served.project["id"]).reason is not None  # no overlap in this project
        cards = client.scorecards(served.project["id"])
        assert [card.name for card in cards.annotators] == ["ann"] and cards.annotators[0].labels == 150
    with Client(f"http://127.0.0.1:{free_port()}", "token", retries=2, backoff=0.01) as lost:
        with pytest.raises(ApiError) as unreachable:
            lost.me()
    assert unreachable.value.status is None and unreachable.value.code == "unreachable"
    assert "after 3 attempt(s)" in unreachable.value.message


def test_a_pull_whose_stream_keeps_breaking_is_retried_then_says_how_far_it_got(served, tmp_path):
    with served.client(served.admin, retries=1, backoff=0.01) as client:
        project = client.create_project("three", ["a", "b"])
        uploaded = client.upload(project, [_png(tmp_path / f"{i}.png", i) for i in range(3)])
        task = client.next_task(project)
        while task is not None:  # one round trip per label
            task = client.annotate_and_next(project, task.image_id, label="a").next_task
        snapshot = client.create_snapshot(project)
        assert snapshot.item_count == 3
        gone = uploaded.files[1].sha256
        (served.blobs / gone[:2] / gone).unlink()  # the server meets it mid-stream, after the first image
        with pytest.raises(ApiError) as broken:
            client.pull_dataset(snapshot.id, tmp_path / "three")
    assert broken.value.code == "download_broken"
    assert "after 2 attempt(s); 1 of 3 images are in" in broken.value.message
    assert [p.name for p in (tmp_path / "three").glob("*/*/*.png")] == [f"{uploaded.files[0].image_id}.png"]


def _png(path: Path, seed: int) -> Path:
    path.write_bytes(img.png(color=(seed, 1, 2)))
    return path


def test_a_503_is_retried_with_the_same_idempotency_key():
    seen: list[str | None] = []

    class Busy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Idempotency-Key"))
            busy = len(seen) <= 2
            body = json.dumps(
                {"error": {"code": "storage_unavailable", "message": "disk full"}} if busy else ANNOTATION
            ).encode()
            self.send_response(503 if busy else 201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_address[1]}", "token", backoff=0.01) as client:
            stored = client.annotate(1, 7, label="cat")
    finally:
        server.shutdown()
    assert stored.id == 11 and len(seen) == 3 and len(set(seen)) == 1 and seen[0]


ANNOTATION = {
    "id": 11,
    "project_id": 1,
    "image_id": 7,
    "annotator_id": 2,
    "label": "cat",
    "boxes": None,
    "duration_ms": None,
    "origin": "human",
    "is_current": True,
    "supersedes_id": None,
    "created_at": "2025-01-01T00:00:00Z",
}
