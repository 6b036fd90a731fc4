"""Box formats of detection projects through the HTTP API: COCO (loaded by pycocotools), YOLO and Label Studio
exports, and the COCO and Label Studio imports, round-tripped into fresh projects."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO

from storage.models import Role
from tests import imagefactory as img
from tests.factories import make_project, make_user
from tests.test_detection import LABELS, box, submit

pytestmark = pytest.mark.postgres  # imports lock image rows and store JSON boxes: both differ by dialect

LABELWHEEL = str(Path(sys.executable).parent / "labelwheel")
NO_OVERLAP = {"gold_rate": 0.0, "overlap_rate": 0.0}


def export(client, project, account, fmt, **params):
    response = client.get(
        f"/api/v1/projects/{project['id']}/export", params={"format": fmt, **params}, headers=account.headers
    )
    assert response.status_code == 200, response.text
    return response


def by_sha(client, project, account) -> dict[str, list[tuple]]:
    """Each labeled image's current boxes, keyed by content hash (ids differ between projects)."""
    items = export(client, project, account, "json").json()
    return {i["sha256"]: sorted((b["label"], b["x"], b["y"], b["w"], b["h"]) for b in i["boxes"]) for i in items}


@pytest.fixture
def boxed(client, admin, annotator):
    """A detection project: two boxes on one image, "no objects" on another, a box on a photo turned by its EXIF
    orientation (60x20 stored, 20x60 upright), gold boxes on a fourth image, and a fifth image not labeled yet."""
    project = make_project(client, admin, annotator, labels=LABELS, task_type="detection", settings=NO_OVERLAP)
    files = {
        "two.png": img.png(40, 30, color=(1, 50, 90)),
        "empty.png": img.png(40, 30, color=(2, 50, 90)),
        "turned.jpg": img.jpeg_with_orientation(6, size=(60, 20)),
        "gold.png": img.png(40, 30, color=(4, 50, 90)),
        "later.png": img.png(40, 30, color=(5, 50, 90)),
    }
    uploaded = client.post(
        f"/api/v1/projects/{project['id']}/images", files=[("files", f) for f in files.items()], headers=admin.headers
    )
    assert uploaded.status_code == 201, uploaded.text
    ids = {f["name"]: f["image_id"] for f in uploaded.json()["files"]}
    answers = {
        "two.png": [box(x=1.5, y=2.25, w=10.5, h=8.0), box(label="person", x=20.0, y=0.0, w=19.75, h=29.5)],
        "empty.png": [],
        "turned.jpg": [box(label="person", x=2.0, y=35.0, w=15.0, h=24.0)],
    }
    for name, boxes in answers.items():
        assert submit(client, project, annotator, ids[name], boxes).status_code == 201
    gold = client.put(
        f"/api/v1/projects/{project['id']}/gold",
        json={"image_id": ids["gold.png"], "boxes": [box(x=3.0, y=4.0, w=5.0, h=6.0)]},
        headers=admin.headers,
    )
    assert gold.status_code == 200, gold.text
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    return {"project": project, "files": files, "ids": ids, "sha": sha, "annotator": annotator}


def test_a_coco_export_loads_in_pycocotools_and_imports_into_a_fresh_project(client, admin, boxed, tmp_path):
    project, ids, sha = boxed["project"], boxed["ids"], boxed["sha"]
    response = export(client, project, admin, "coco")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="project-{project["id"]}-labels.coco.json"'
    )
    path = tmp_path / "coco.json"
    path.write_bytes(response.content)
    coco = COCO(str(path))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(1, "car"), (2, "person")]
    labeled = [ids[name] for name in ("two.png", "empty.png", "turned.jpg", "gold.png")]
    assert sorted(coco.getImgIds()) == labeled  # the unlabeled image is left out, the empty one kept
    assert len(coco.getAnnIds()) == 4 and coco.getAnnIds(imgIds=[ids["empty.png"]]) == []
    turned = coco.loadImgs([ids["turned.jpg"]])[0]
    assert (turned["width"], turned["height"], turned["file_name"]) == (20, 60, "turned.jpg")
    assert turned["sha256"] == sha["turned.jpg"]

    def boxes_of(name):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[ids[name]]))
        return sorted((coco.cats[a["category_id"]]["name"], a["bbox"], a["area"], a["iscrowd"]) for a in anns)

    assert boxes_of("two.png") == [
        ("car", [1.5, 2.25, 10.5, 8.0], 84.0, 0),
        ("person", [20.0, 0.0, 19.75, 29.5], 582.625, 0),
    ]
    assert boxes_of("gold.png") == [("car", [3.0, 4.0, 5.0, 6.0], 30.0, 0)]

    # Into a fresh project: the files in a zip (the unlabeled one too, which no COCO image names).
    fresh = make_project(client, admin, labels=LABELS, task_type="detection", settings=NO_OVERLAP)
    archive = img.zip_of({f"photos/{name}": data for name, data in boxed["files"].items()})

    def import_coco(files):
        return client.post(
            f"/api/v1/projects/{fresh['id']}/import/coco",
            files=[("coco", ("coco.json", response.content)), *[("files", f) for f in files]],
            headers=admin.headers,
        )

    first = import_coco([("photos.zip", archive)])
    assert first.status_code == 201, first.text
    summary = first.json()
    assert (summary["images"], summary["images_imported"], summary["images_rejected"]) == (4, 4, 0)
    assert (summary["files_accepted"], summary["unreferenced_files"], summary["annotations_imported"]) == (5, 1, 4)
    assert summary["annotator"]["name"] == "coco-import" and summary["annotator"]["created"] is True
    assert by_sha(client, fresh, admin) == by_sha(client, project, admin)
    assert by_sha(client, fresh, admin)[sha["empty.png"]] == []
    history = client.get(f"/api/v1/projects/{fresh['id']}/annotations", headers=admin.headers).json()["items"]
    assert {(a["origin"], a["annotator_id"]) for a in history} == {("imported", summary["annotator"]["user_id"])}

    again = import_coco([])  # the images are in the project now: the sha256 keys find them
    assert again.status_code == 200, again.text
    assert (again.json()["annotations_imported"], again.json()["annotations_existing"]) == (0, 4)
    assert len(client.get(f"/api/v1/projects/{fresh['id']}/annotations", headers=admin.headers).json()["items"]) == 4


def test_a_coco_file_from_elsewhere_reports_each_image_problem(client, admin):
    project = make_project(client, admin, labels=LABELS, task_type="detection", settings=NO_OVERLAP)
    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    files = [(name, img.png(40, 30, color=(i, 9, 9))) for i, name in enumerate(names)]
    images = [
        {"id": 10 + i, "file_name": f"train2017/{name}", "width": 40, "height": 30} for i, name in enumerate(names)
    ]
    images[3]["width"] = 80  # drawn on a larger copy
    images.append({"id": 99, "file_name": "missing.png", "width": 40, "height": 30})
    coco = {
        "images": images,
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "truck"}, {"id": 9, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 9, "bbox": [5, 5, 30, 20], "iscrowd": 1},
            {"id": 3, "image_id": 11, "category_id": 7, "bbox": [1, 1, 10, 10], "iscrowd": 0},
            {"id": 4, "image_id": 12, "category_id": 9, "bbox": [30, 1, 20, 10], "iscrowd": 0},
            {"id": 5, "image_id": 13, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0},
        ],
    }
    response = client.post(
        f"/api/v1/projects/{project['id']}/import/coco",
        files=[("coco", ("c.json", json.dumps(coco).encode())), *[("files", f) for f in files]],
        data={"annotator": "vendor-a"},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    summary = response.json()
    problems = {p["task_id"]: p for p in summary["problems"]}
    assert {i: p["code"] for i, p in problems.items()} == {
        11: "unknown_label",
        12: "invalid_boxes",
        13: "size_mismatch",
        99: "unmatched_image",
    }
    assert "box 0: it lies 10 px outside the 40x30 upright image" in problems[12]["message"]
    assert problems[13]["details"] == {"drawn_on": [[80.0, 30.0]], "upright": [40, 30]}
    assert (summary["images_imported"], summary["images_rejected"], summary["crowd_ignored"]) == (2, 4, 1)
    assert summary["annotator"]["name"] == "vendor-a"
    labels = client.get(f"/api/v1/projects/{project['id']}/labels", headers=admin.headers).json()["items"]
    assert sorted(len(item["boxes"]) for item in labels) == [0, 1]  # a.png's one box (the crowd left out), e.png's none

    bad = client.post(
        f"/api/v1/projects/{project['id']}/import/coco",
        files=[("coco", ("c.json", json.dumps({**coco, "annotations": [{"image_id": 5}]}).encode()))],
        headers=admin.headers,
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_export"
    assert "image ids the file's images do not list (5)" in bad.json()["error"]["message"]


def test_a_labelstudio_export_of_boxes_round_trips_and_bad_regions_are_refused_per_task(client, admin, boxed):
    project, ids = boxed["project"], boxed["ids"]
    tasks = export(client, project, admin, "labelstudio").json()
    by_id = {t["id"]: t for t in tasks}
    assert sorted(by_id) == sorted(ids[n] for n in ("two.png", "empty.png", "turned.jpg", "gold.png"))
    (two,) = by_id[ids["two.png"]]["annotations"]
    assert two["completed_by"] == boxed["annotator"].id
    region = next(r for r in two["result"] if r["value"]["rectanglelabels"] == ["car"])
    assert (region["from_name"], region["to_name"], region["type"]) == ("label", "image", "rectanglelabels")
    assert (region["original_width"], region["original_height"]) == (40, 30)
    value = dict(region["value"])
    assert value.pop("rectanglelabels") == ["car"]
    assert value == pytest.approx({"x": 3.75, "y": 7.5, "width": 26.25, "height": 80 / 3, "rotation": 0})
    turned = by_id[ids["turned.jpg"]]["annotations"][0]["result"][0]
    assert (turned["original_width"], turned["original_height"]) == (20, 60)
    assert by_id[ids["empty.png"]]["annotations"][0]["result"] == []
    assert by_id[ids["gold.png"]]["annotations"] == []
    assert by_id[ids["gold.png"]]["meta"]["gold_boxes"] == [box(x=3.0, y=4.0, w=5.0, h=6.0)]

    fresh = make_project(client, admin, labels=LABELS, task_type="detection", settings=NO_OVERLAP)

    def import_ls(tasks, files=()):
        return client.post(
            f"/api/v1/projects/{fresh['id']}/import/labelstudio",
            files=[("export", ("export.json", json.dumps(tasks).encode())), *[("files", f) for f in files]],
            headers=admin.headers,
        )

    first = import_ls(tasks, files=list(boxed["files"].items()))
    assert first.status_code == 201, first.text
    summary = first.json()
    assert (summary["tasks_imported"], summary["annotations_imported"], summary["gold_set"]) == (4, 3, 1)
    assert [m["name"] for m in summary["annotators"]] == [f"ls-{boxed['annotator'].id}"]
    assert by_sha(client, fresh, admin) == by_sha(client, project, admin)  # percent -> pixels kept to 1e-6 px
    again = import_ls(tasks)
    assert again.status_code == 200, again.text
    assert (again.json()["annotations_imported"], again.json()["annotations_existing"], again.json()["gold_set"]) == (
        0,
        3,
        0,
    )

    # Edited tasks: each unusable region refuses its task, and the rest of the import goes on.
    edited = [copy.deepcopy(by_id[ids["two.png"]]) for _ in range(5)]
    edited[0]["annotations"][0]["result"][0]["value"]["rotation"] = 30
    edited[4]["annotations"][0]["result"][0]["image_rotation"] = 90  # drawn on the image turned in Label Studio
    edited[1]["annotations"][0]["result"][0]["original_width"] = 400
    edited[2]["annotations"][0]["result"][0]["type"] = "polygonlabels"
    edited[3]["annotations"][0]["result"] = [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["car"]}}
    ]
    for n, task in enumerate(edited):
        task["annotations"][0]["completed_by"] = 1000 + n  # new annotators: these are no re-imports
    refused = import_ls(edited)
    assert {p["task_index"]: p["code"] for p in refused.json()["problems"]} == {
        0: "rotated_box",
        1: "size_mismatch",
        2: "unsupported_region",
        3: "no_boxes",
        4: "rotated_box",
    }
    assert refused.json()["annotations_imported"] == 0


def test_a_yolo_zip_holds_normalized_boxes_a_data_yaml_and_on_request_the_images(client, admin, boxed):
    project, sha = boxed["project"], boxed["sha"]
    response = export(client, project, admin, "yolo", images="true")
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    data = yaml.safe_load(archive.read("data.yaml"))
    assert data == {"train": "train.txt", "val": "val.txt", "nc": 2, "names": ["car", "person"]}
    items = {i["sha256"]: i for i in export(client, project, admin, "json").json()}
    assert len(items) == 4 and sha["later.png"] not in items
    listed = archive.read("train.txt").decode().split() + archive.read("val.txt").decode().split()
    stems = {name.removeprefix("./images/").split(".")[0]: name for name in listed}
    assert set(stems) == set(items)
    for digest, item in items.items():
        assert f"./images/{digest}.{'jpg' if digest == sha['turned.jpg'] else 'png'}" == stems[digest]
        assert hashlib.sha256(archive.read(stems[digest].removeprefix("./"))).hexdigest() == digest
        lines = [line.split() for line in archive.read(f"labels/{digest}.txt").decode().splitlines()]
        expected = sorted(
            [
                LABELS.index(b["label"]),
                (b["x"] + b["w"] / 2) / item["width"],
                (b["y"] + b["h"] / 2) / item["height"],
                b["w"] / item["width"],
                b["h"] / item["height"],
            ]
            for b in item["boxes"]
        )
        got = sorted([int(k), *map(float, rest)] for k, *rest in lines)
        assert len(got) == len(expected)
        for line, wanted in zip(got, expected, strict=True):
            assert line == pytest.approx(wanted, abs=1e-6)
    assert archive.read(f"labels/{sha['empty.png']}.txt") == b""
    turned = archive.read(f"labels/{sha['turned.jpg']}.txt").decode()
    assert turned == "1 0.475000 0.783333 0.750000 0.400000\n"  # of the 20x60 upright image

    labels_only = zipfile.ZipFile(io.BytesIO(export(client, project, admin, "yolo").content))
    assert not any(name.startswith("images/") for name in labels_only.namelist())
    assert len([n for n in labels_only.namelist() if n.startswith("labels/")]) == 4


def test_box_exports_written_a_batch_at_a_time_join_into_the_same_documents(app, client, admin, boxed):
    from annotation.exports import DETECTION_FORMATS, export_chunks

    def parsed(fmt, data):
        if fmt == "yolo":
            archive = zipfile.ZipFile(io.BytesIO(data))
            return {name: archive.read(name) for name in archive.namelist()}
        document = json.loads(data.replace(b"http://testserver", b""))
        return {k: v for k, v in document.items() if k != "info"} if fmt == "coco" else document

    for fmt in DETECTION_FORMATS:
        seen = []
        db = app.state.runtime.db
        chunks = export_chunks(db, project_id=boxed["project"]["id"], fmt=fmt, batch_size=1, on_batch=seen.append)
        data = b"".join(chunks)
        assert seen == [1, 1, 1, 1]
        assert parsed(fmt, data) == parsed(fmt, export(client, boxed["project"], admin, fmt).content)


def test_formats_that_do_not_fit_the_project_are_refused_naming_those_that_do(client, admin, boxed):
    classes = make_project(client, admin)
    for fmt in ("coco", "yolo"):
        refused = client.get(f"/api/v1/projects/{classes['id']}/export?format={fmt}", headers=admin.headers)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "not_for_classification"
        assert "csv, json or labelstudio" in refused.json()["error"]["message"]
    path = f"/api/v1/projects/{boxed['project']['id']}"
    csv = client.get(f"{path}/export?format=csv", headers=admin.headers)
    assert csv.status_code == 422 and csv.json()["error"]["code"] == "not_for_detection"
    assert "coco, yolo, labelstudio or json" in csv.json()["error"]["message"]
    images = client.get(f"{path}/export?format=coco&images=true", headers=admin.headers)
    assert images.status_code == 422 and images.json()["error"]["code"] == "images_not_in_format"
    coco = client.post(
        f"/api/v1/projects/{classes['id']}/import/coco",
        files=[("coco", ("c.json", b'{"images": [], "annotations": [], "categories": []}'))],
        headers=admin.headers,
    )
    assert coco.status_code == 422 and coco.json()["error"]["code"] == "not_for_classification"
    engineer = make_user(client.app, "boxeng", Role.engineer)
    client.post(f"{path}/members", json={"user_id": engineer.id}, headers=admin.headers)
    assert (
        client.post(f"{path}/import/coco", files=[("coco", ("c.json", b"{}"))], headers=engineer.headers).status_code
        == 403
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the command reads as the API does
def test_the_cli_exports_boxes_as_coco(client, admin, boxed, database_url, tmp_path):
    env = {**os.environ, "LABELWHEEL_DATA_DIR": str(tmp_path / "data"), "LABELWHEEL_DATABASE_URL": database_url}
    out = tmp_path / "boxes.json"
    args = ["export", "--project", boxed["project"]["name"], "--format", "coco", "--out", str(out)]
    done = subprocess.run([LABELWHEEL, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"4 images written to {out}"
    written, served = json.loads(out.read_text()), export(client, boxed["project"], admin, "coco").json()
    assert {k: v for k, v in written.items() if k != "info"} == {k: v for k, v in served.items() if k != "info"}
