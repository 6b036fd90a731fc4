"""Exports of the current labels (CSV, JSON, Label Studio) and the Label Studio import, through the HTTP API."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from annotation.csv_cells import CsvWriter
from storage.models import Image, Role
from tests import imagefactory as img
from tests.factories import make_project, make_user

LABELWHEEL = str(Path(sys.executable).parent / "labelwheel")
OVERLAP_2 = {"overlap_rate": 1.0, "overlap_k": 2, "gold_rate": 0}


def picture(i: int) -> bytes:
    return img.png(color=(i, 100, 200))


def upload(client, project_id, account, files):
    response = client.post(
        f"/api/v1/projects/{project_id}/images",
        files=[("files", (name, data)) for name, data in files.items()],
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    return {f["name"]: f["image_id"] for f in response.json()["files"]}


def label_all(client, project_id, account, choose) -> int:
    """Label every task the queue serves this annotator; ``choose(image_id)`` picks the label."""
    done = 0
    while (task := client.get(f"/api/v1/projects/{project_id}/tasks/next", headers=account.headers)).status_code == 200:
        image_id = task.json()["image_id"]
        submitted = client.post(
            f"/api/v1/projects/{project_id}/annotations",
            json={"image_id": image_id, "label": choose(image_id), "duration_ms": 1500},
            headers=account.headers,
        )
        assert submitted.status_code == 201, submitted.text
        done += 1
    assert task.status_code == 204, task.text
    return done


def export(client, project_id, account, fmt):
    response = client.get(f"/api/v1/projects/{project_id}/export", params={"format": fmt}, headers=account.headers)
    assert response.status_code == 200, response.text
    return response


def csv_rows(text: str) -> dict[int, dict[str, str]]:
    return {int(row["image_id"]): row for row in csv.DictReader(io.StringIO(text))}


@pytest.fixture
def labeled(client, app, admin, engineer):
    """Project A: six images, each labeled by two annotators who disagree on the first one."""
    first = make_user(app, "alice", Role.annotator)
    second = make_user(app, "bob", Role.annotator)
    project = make_project(client, admin, first, second, engineer, settings=OVERLAP_2)
    files = {f"pic{i}.png": picture(i) for i in range(6)}
    ids = upload(client, project["id"], admin, files)
    order = sorted(ids.values())
    labels = project["labels"]
    expected_first = {image_id: labels[n % 3] for n, image_id in enumerate(order)}
    disputed = order[0]

    def second_choice(image_id):
        return "dog" if image_id == disputed else expected_first[image_id]

    assert label_all(client, project["id"], first, expected_first.__getitem__) == 6
    assert label_all(client, project["id"], second, second_choice) == 6
    return {
        "project": project,
        "files": files,
        "ids": ids,
        "annotators": (first, second),
        "labels": expected_first,
        "disputed": disputed,
    }


def test_csv_json_and_labelstudio_exports_hold_exactly_the_current_labels(client, admin, engineer, labeled):
    project_id, disputed = labeled["project"]["id"], labeled["disputed"]
    first, second = labeled["annotators"]
    current = dict(labeled["labels"])  # the disputed image: cat vs dog, a tie broken to "cat"
    assert current[disputed] == "cat"

    response = export(client, project_id, engineer, "csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == f'attachment; filename="project-{project_id}-labels.csv"'
    assert response.text.splitlines()[0] == "image_id,sha256,original_name,split,label,tie,label_count,gold,votes"
    rows = csv_rows(response.text)
    assert {i: r["label"] for i, r in rows.items()} == current
    assert {i for i, r in rows.items() if r["tie"] == "true"} == {disputed}
    assert rows[disputed]["votes"] == "1" and rows[disputed]["label_count"] == "2"
    names = {image_id: name for name, image_id in labeled["ids"].items()}
    assert all(r["original_name"] == names[i] and r["gold"] == "false" for i, r in rows.items())

    items = export(client, project_id, admin, "json").json()
    assert [item["image_id"] for item in items] == sorted(current)
    by_id = {item["image_id"]: item for item in items}
    assert by_id[disputed]["tie"] is True
    assert sorted((a["annotator"], a["label"]) for a in by_id[disputed]["annotations"]) == [
        ("alice", "cat"),
        ("bob", "dog"),
    ]
    assert all(a["duration_ms"] == 1500 and a["origin"] == "human" for item in items for a in item["annotations"])

    response = export(client, project_id, admin, "labelstudio")
    assert response.headers["content-disposition"] == f'attachment; filename="project-{project_id}-labels.json"'
    tasks = response.json()
    assert [t["id"] for t in tasks] == sorted(current)
    task = next(t for t in tasks if t["id"] == disputed)
    assert task["data"] == {"image": f"http://testserver/api/v1/images/{disputed}/content"}
    assert task["predictions"] == [] and task["meta"]["original_name"] == names[disputed]
    assert sorted((a["completed_by"], a["result"][0]["value"]["choices"][0]) for a in task["annotations"]) == [
        (first.id, "cat"),
        (second.id, "dog"),
    ]
    for annotation in task["annotations"]:
        assert annotation["was_cancelled"] is False and annotation["ground_truth"] is False
        assert annotation["lead_time"] == 1.5
        assert annotation["result"] == [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": annotation["result"][0]["value"]["choices"]},
            }
        ]

    # A correction: alice changes her mind on the disputed image, which now has two votes for "dog".
    corrected = client.post(
        f"/api/v1/projects/{project_id}/annotations", json={"image_id": disputed, "label": "dog"}, headers=first.headers
    )
    assert corrected.status_code == 201, corrected.text
    rows = csv_rows(export(client, project_id, engineer, "csv").text)
    assert (rows[disputed]["label"], rows[disputed]["tie"], rows[disputed]["votes"]) == ("dog", "false", "2")
    task = next(t for t in export(client, project_id, admin, "labelstudio").json() if t["id"] == disputed)
    assert [a["result"][0]["value"]["choices"] for a in task["annotations"]] == [["dog"], ["dog"]]


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_escaped(client, admin, annotator):
    """OWASP's CSV injection advice: a leading quote before = + - @; the JSON export keeps the names as they are."""
    labels = ["=1+1", "+cmd", "-2", "@SUM(A1)", "plain"]
    project = make_project(client, admin, annotator, labels=labels, settings={"overlap_rate": 0, "gold_rate": 0})
    names = ["=cmd|' /C calc'!A0.png", "+a.png", "-b.png", "@c.png", "d.png"]
    ids = upload(client, project["id"], admin, {name: picture(i) for i, name in enumerate(names)})
    label_of = {ids[name]: label for name, label in zip(names, labels, strict=True)}
    assert label_all(client, project["id"], annotator, label_of.__getitem__) == 5

    rows = csv_rows(export(client, project["id"], admin, "csv").text)
    assert {i: (r["original_name"], r["label"]) for i, r in rows.items()} == {
        ids[name]: (name if name == "d.png" else f"'{name}", label if label == "plain" else f"'{label}")
        for name, label in zip(names, labels, strict=True)
    }
    items = export(client, project["id"], admin, "json").json()
    assert {(item["original_name"], item["label"]) for item in items} == set(zip(names, labels, strict=True))


def test_the_csv_writer_escapes_tabs_and_carriage_returns_too_and_leaves_numbers():
    buffer = io.StringIO()
    CsvWriter(buffer).writerows([["\tx", "\rx", "a=b", -1, 2.5, "", None], ["x,y", '"q"']])
    assert list(csv.reader(io.StringIO(buffer.getvalue()))) == [
        ["'\tx", "'\rx", "a=b", "-1", "2.5", "", ""],
        ["x,y", '"q"'],
    ]


def test_exports_of_a_project_without_labels_are_empty_but_valid(client, admin):
    project = make_project(client, admin)
    upload(client, project["id"], admin, {"a.png": picture(1)})
    assert export(client, project["id"], admin, "json").json() == []
    assert export(client, project["id"], admin, "labelstudio").json() == []
    assert export(client, project["id"], admin, "csv").text.strip() == (
        "image_id,sha256,original_name,split,label,tie,label_count,gold,votes"
    )


def test_exports_stream_in_batches_that_join_into_one_document(app, client, admin, labeled):
    from annotation.exports import CLASSIFICATION_FORMATS, export_chunks

    db, project_id = app.state.runtime.db, labeled["project"]["id"]
    for fmt in CLASSIFICATION_FORMATS:
        seen = []
        chunks = list(export_chunks(db, project_id=project_id, fmt=fmt, batch_size=4, on_batch=seen.append))
        assert seen == [4, 2]
        assert b"".join(chunks) == export(client, project_id, admin, fmt.value).content.replace(
            b"http://testserver", b""
        )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL readers take no write lock
def test_an_export_holds_no_write_lock_while_it_streams(app, labeled):
    import sqlite3

    from annotation.exports import labeled_batches

    db = app.state.runtime.db
    writer = sqlite3.connect(db.engine.url.database, timeout=0, isolation_level=None)
    batches = labeled_batches(db, project_id=labeled["project"]["id"], batch_size=2)
    next(batches)
    # Between batches no session is open; a writer that may not wait at all gets the lock at once.
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("COMMIT")
    with db.read_session() as session:  # the kind of session each batch is read in
        session.execute(select(Image.id)).all()
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("COMMIT")
    assert sum(len(batch) for batch in batches) == 4
    writer.close()


def import_ls(client, project_id, account, tasks, files=(), **form):
    return client.post(
        f"/api/v1/projects/{project_id}/import/labelstudio",
        files=[("export", ("export.json", json.dumps(tasks).encode())), *[("files", f) for f in files]],
        data=form,
        headers=account.headers,
    )


def test_a_labelstudio_round_trip_gives_the_same_labels_and_a_second_import_adds_nothing(client, admin, labeled):
    project_a = labeled["project"]
    first, second = labeled["annotators"]
    gold = client.put(
        f"/api/v1/projects/{project_a['id']}/gold",
        json={"image_id": labeled["disputed"], "label": "dog"},
        headers=admin.headers,
    )
    assert gold.status_code == 200, gold.text
    tasks = export(client, project_a["id"], admin, "labelstudio").json()
    project_b = make_project(client, admin, labels=project_a["labels"])

    response = import_ls(client, project_b["id"], admin, tasks, files=list(labeled["files"].items()))
    assert response.status_code == 201, response.text
    summary = response.json()
    assert (summary["tasks"], summary["tasks_imported"], summary["tasks_rejected"]) == (6, 6, 0)
    assert (summary["images_accepted"], summary["annotations_imported"], summary["users_created"]) == (6, 12, 2)
    assert summary["problems"] == [] and summary["unreferenced_files"] == 0
    assert summary["gold_set"] == 1
    mapping = {m["labelstudio"]: m["name"] for m in summary["annotators"]}
    assert mapping == {str(first.id): f"ls-{first.id}", str(second.id): f"ls-{second.id}"}

    def by_hash(project_id):
        rows = csv_rows(export(client, project_id, admin, "csv").text).values()
        return {r["sha256"]: (r["label"], r["tie"], r["label_count"], r["votes"], r["gold"]) for r in rows}

    assert by_hash(project_b["id"]) == by_hash(project_a["id"])
    members = client.get(f"/api/v1/projects/{project_b['id']}/members", headers=admin.headers).json()
    assert {m["name"] for m in members} == set(mapping.values())
    annotations_b = {
        (item["sha256"], a["annotator"], a["label"], a["origin"])
        for item in export(client, project_b["id"], admin, "json").json()
        for a in item["annotations"]
    }
    annotations_a = {
        (item["sha256"], mapping[str(a["annotator_id"])], a["label"], "imported")
        for item in export(client, project_a["id"], admin, "json").json()
        for a in item["annotations"]
    }
    assert annotations_b == annotations_a

    again = import_ls(client, project_b["id"], admin, tasks, files=list(labeled["files"].items()))
    assert again.status_code == 200, again.text
    assert (again.json()["annotations_imported"], again.json()["annotations_existing"]) == (0, 12)
    assert (again.json()["images_duplicate"], again.json()["users_created"], again.json()["gold_set"]) == (6, 0, 0)
    # The images are in B now: the content hashes in the tasks find them without another upload.
    labels_only = import_ls(client, project_b["id"], admin, tasks)
    assert labels_only.status_code == 200, labels_only.text
    assert (labels_only.json()["tasks_imported"], labels_only.json()["annotations_imported"]) == (6, 0)
    history = client.get(f"/api/v1/projects/{project_b['id']}/annotations", headers=admin.headers).json()
    assert len(history["items"]) == 12


def hand_written_export() -> list[dict]:
    """A Label Studio 1.23 full export as the design note shows it: upload paths, several annotators."""

    def annotation(ident, by, label, *, cancelled=False, created="2025-03-01T10:00:00.000000Z"):
        result = [] if cancelled else [choice(label)]
        return {
            "id": ident,
            "completed_by": by,
            "was_cancelled": cancelled,
            "ground_truth": False,
            "lead_time": 3.2,
            "created_at": created,
            "updated_at": created,
            "result": result,
        }

    def choice(label):
        return {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}

    return [
        {
            "id": 453,
            "data": {"image": "/data/upload/10/ebf78cc3-cat1.png"},
            "annotations": [
                annotation(1267, 1, "cat"),
                annotation(1268, 2, "cat"),
                annotation(1269, {"id": 3, "email": "carol@example.com"}, "", cancelled=True),
            ],
            "predictions": [
                {"id": 58, "model_version": "v3", "score": 0.22, "result": [{**choice("dog"), "score": 0.22}]}
            ],
        },
        {
            "id": 454,
            "data": {"image": "/data/upload/10/0a1b2c3d-dog1.png"},
            "annotations": [
                annotation(1270, 1, "dog"),
                annotation(1271, 2, "bird"),
                annotation(1272, {"id": 3, "email": "carol@example.com"}, "dog"),
            ],
            "predictions": [],
        },
        {
            "id": 455,
            "data": {"image": "/data/upload/10/5e6f7a8b-horse.png"},
            "annotations": [annotation(1273, 1, "horse"), annotation(1274, 2, "cat")],
            "predictions": [],
        },
        {
            "id": 456,
            "data": {"image": "/data/upload/10/9c9c9c9c-missing.png"},
            "annotations": [annotation(1275, 1, "cat")],
            "predictions": [],
        },
        {
            "id": 457,
            "data": {"image": "https://example.com/bird1.png"},
            "annotations": [
                annotation(1277, 1, "bird", created="2025-03-02T10:00:00Z"),
                annotation(1276, 1, "cat", created="2025-03-01T10:00:00Z"),
            ],
            "predictions": [],
        },
    ]


def test_a_hand_written_labelstudio_export_imports_with_the_right_counts_and_problems(client, admin):
    project = make_project(client, admin)
    archive = img.zip_of({"photos/0a1b2c3d-dog1.png": picture(2)})
    files = [
        ("cat1.png", picture(1)),  # matches without Label Studio's upload prefix
        ("dogs.zip", archive),  # the prefixed name, inside a zip
        ("horse.png", picture(3)),
        ("bird1.png", picture(4)),  # the URL is never fetched: its file name matches
    ]
    response = import_ls(client, project["id"], admin, hand_written_export(), files=files)
    assert response.status_code == 201, response.text
    summary = response.json()
    assert (summary["tasks"], summary["tasks_imported"], summary["tasks_rejected"]) == (5, 3, 2)
    assert (summary["images_accepted"], summary["images_rejected"], summary["unreferenced_files"]) == (4, 0, 0)
    assert summary["annotations_imported"] == 2 + 3 + 2
    assert (summary["annotations_cancelled"], summary["predictions_ignored"]) == (1, 1)
    assert summary["users_created"] == 3
    assert {m["name"] for m in summary["annotators"]} == {"ls-1", "ls-2", "ls-carol"}
    problems = {p["task_id"]: p for p in summary["problems"]}
    assert set(problems) == {455, 456}
    assert problems[455]["code"] == "unknown_label"
    assert problems[455]["details"]["valid_labels"] == ["cat", "dog", "bird"]
    assert problems[456]["code"] == "unmatched_image"
    assert "never fetches URLs" in problems[456]["message"]

    images = client.get(f"/api/v1/projects/{project['id']}/images", headers=admin.headers).json()["items"]
    ids = {i["original_name"]: i["id"] for i in images}
    assert {i["source"] for i in images} == {"label_studio"}
    labels = client.get(f"/api/v1/projects/{project['id']}/labels", headers=admin.headers).json()["items"]
    current = {i["image_id"]: (i["label"], i["tie"], i["label_count"]) for i in labels}
    assert current == {
        ids["cat1.png"]: ("cat", False, 2),
        ids["dogs.zip/photos/0a1b2c3d-dog1.png"]: ("dog", False, 3),
        ids["bird1.png"]: ("bird", False, 1),
    }
    # The horse task was refused as a whole: its image is stored, none of its labels.
    assert ids["horse.png"] not in current
    history = client.get(
        f"/api/v1/projects/{project['id']}/images/{ids['bird1.png']}/annotations", headers=admin.headers
    ).json()
    assert [(a["label"], a["is_current"], a["origin"]) for a in history] == [
        ("cat", False, "imported"),
        ("bird", True, "imported"),
    ]
    assert history[1]["supersedes_id"] == history[0]["id"] and history[1]["duration_ms"] == 3200
    assert history[0]["created_at"].startswith("2025-03-01T10:00:00")

    again = import_ls(client, project["id"], admin, hand_written_export(), files=files)
    assert again.status_code == 200, again.text
    assert (again.json()["annotations_imported"], again.json()["annotations_existing"]) == (0, 7)


def test_a_label_config_names_the_control_and_the_data_key(client, admin):
    project = make_project(client, admin)
    config = """<View>
      <Image name="img" value="$picture"/>
      <Choices name="quality" toName="img"><Choice value="sharp"/><Choice value="blurry"/></Choices>
      <Choices name="cls" toName="img"><Choice value="cat"/><Choice value="dog"/></Choices>
    </View>"""
    task = {
        "id": 1,
        "data": {"picture": "/data/upload/3/aaaabbbb-one.png", "caption": "ignored"},
        "annotations": [
            {
                "id": 1,
                "completed_by": 7,
                "was_cancelled": False,
                "result": [
                    {"from_name": "quality", "to_name": "img", "type": "choices", "value": {"choices": ["sharp"]}},
                    {"from_name": "cls", "to_name": "img", "type": "choices", "value": {"choices": ["dog"]}},
                ],
            }
        ],
    }
    # Without the config: two strings in data (which is the image?) and two Choices (which is the class?).
    without = import_ls(client, project["id"], admin, [task], files=[("one.png", picture(9))])
    assert without.json()["problems"][0]["code"] == "unmatched_image"
    one_string = {**task, "data": {"picture": task["data"]["picture"]}}
    without = import_ls(client, project["id"], admin, [one_string], files=[("one.png", picture(9))])
    assert without.json()["problems"][0]["code"] == "not_single_choice"
    assert "label_config" in without.json()["problems"][0]["message"]
    response = import_ls(client, project["id"], admin, [task], files=[("one.png", picture(9))], label_config=config)
    assert response.status_code == 201, response.text
    assert response.json()["annotations_imported"] == 1
    labels = client.get(f"/api/v1/projects/{project['id']}/labels", headers=admin.headers).json()["items"]
    assert [i["label"] for i in labels] == ["dog"]
    bad = import_ls(client, project["id"], admin, [task], label_config="<View><Text name='t' value='$x'/></View>")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_config"


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"not json", "invalid_export"), (b'{"tasks": []}', "invalid_export"), (b"[" * 100_000, "invalid_export")],
)
def test_an_export_that_is_not_a_task_list_is_refused(client, admin, content, code):
    project = make_project(client, admin)
    response = client.post(
        f"/api/v1/projects/{project['id']}/import/labelstudio",
        files=[("export", ("export.json", content))],
        headers=admin.headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code


def test_malformed_tasks_are_reported_one_by_one(client, admin):
    project = make_project(client, admin)
    tasks = [
        1,
        {"data": "x"},
        {"id": 2, "data": {"image": "a.png"}, "annotations": 5},
        {"id": 3, "data": {"image": "a.png"}, "annotations": [{"result": [{"type": "choices", "value": {}}]}]},
        {"id": 4, "data": {"image": "a.png"}, "annotations": [{"completed_by": None, "result": [
            {"type": "choices", "value": {"choices": ["cat"]}}]}]},
        {"id": 5, "data": {"image": "a.png"}, "annotations": [{"completed_by": 1, "lead_time": float("nan"), "result": [
            {"type": "choices", "value": {"choices": ["cat"]}}]}]},
        {"id": 6, "data": {"image": "a.png"}, "annotations": [{"completed_by": 1, "result": [
            {"type": "choices", "value": {"choices": ["cat", "dog"]}}]}]},
    ]  # fmt: skip
    response = import_ls(client, project["id"], admin, tasks, files=[("a.png", picture(5))])
    assert response.status_code == 201, response.text
    codes = [(p["task_index"], p["code"]) for p in response.json()["problems"]]
    assert codes == [(0, "invalid_task"), (1, "invalid_task"), (2, "invalid_task"), (4, "unknown_annotator"),
                     (6, "not_single_choice")]  # fmt: skip
    # Task 3 is its image and an empty result (no label); task 5 a label without a usable lead time.
    assert response.json()["tasks_imported"] == 2
    history = client.get(f"/api/v1/projects/{project['id']}/annotations", headers=admin.headers).json()["items"]
    assert [(a["label"], a["duration_ms"]) for a in history] == [("cat", None)]


def test_annotators_may_neither_export_nor_import_and_a_bad_format_is_refused(
    client, admin, engineer, annotator, labeled
):
    project_id = labeled["project"]["id"]
    client.post(f"/api/v1/projects/{project_id}/members", json={"user_id": annotator.id}, headers=admin.headers)
    for fmt in ("csv", "json", "labelstudio"):
        refused = client.get(f"/api/v1/projects/{project_id}/export", params={"format": fmt}, headers=annotator.headers)
        assert refused.status_code == 403, refused.text
    for account in (annotator, engineer):
        refused = import_ls(client, project_id, account, [])
        assert refused.status_code == 403, refused.text
    bad = client.get(f"/api/v1/projects/{project_id}/export", params={"format": "xlsx"}, headers=admin.headers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    outsider = make_user(client.app, "outsider", Role.engineer)
    assert client.get(f"/api/v1/projects/{project_id}/export", headers=outsider.headers).status_code == 404


@pytest.fixture
def cli_env(tmp_path, database_url):
    return {**os.environ, "LABELWHEEL_DATA_DIR": str(tmp_path / "data"), "LABELWHEEL_DATABASE_URL": database_url}


def run_cli(args, env):
    return subprocess.run([LABELWHEEL, *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_cli_export_writes_what_the_http_export_serves(client, admin, labeled, cli_env, tmp_path):
    project = labeled["project"]
    out = tmp_path / "labels.csv"
    done = run_cli(["export", "--project", project["name"], "--format", "csv", "--out", str(out)], cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"6 images written to {out}"
    assert out.read_bytes() == export(client, project["id"], admin, "csv").content
    bad = run_cli(["export", "--project", project["name"], "--format", "xml", "--out", str(out)], cli_env)
    assert bad.returncode == 2 and "unknown format" in bad.stderr


def test_the_cli_imports_a_labelstudio_export_from_a_folder(client, admin, cli_env, tmp_path):
    project = make_project(client, admin)
    folder = tmp_path / "ls-media"
    (folder / "upload" / "10").mkdir(parents=True)
    (folder / "upload" / "10" / "ebf78cc3-cat1.png").write_bytes(picture(1))
    (folder / "dog1.png").write_bytes(picture(2))
    (folder / "bird1.png").write_bytes(picture(4))
    (folder / "horse.png").write_bytes(picture(3))
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(hand_written_export()))
    args = ["import-labelstudio", str(exported), "--project", project["name"], "--images", str(folder)]
    first = run_cli(args, cli_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        "5 tasks: 3 imported, 2 rejected; 7 annotations imported, 0 already there; "
        "images: 4 accepted, 0 duplicate, 0 rejected; 3 users created"
    )
    assert "unmatched_image" in first.stderr and "unknown_label" in first.stderr
    second = run_cli(args, cli_env)
    assert "0 annotations imported, 7 already there" in second.stdout
