"""Detection projects over HTTP: boxes go through the same labeling path as labels (leases, idempotency,
corrections, skips, gold, review, overlap), are checked against the upright image, and the flywheel runs only
detector trainings for such projects."""

from __future__ import annotations

import pytest

from flywheel.policy import start_policy_jobs
from storage.models import JobKind, Role
from tests import imagefactory as img
from tests.factories import make_project, make_user

pytestmark = pytest.mark.postgres  # the queue, locks and idempotency races can differ by dialect

LABELS = ["car", "person"]


def detection_project(client, admin, *members, images=3, **settings):
    project = make_project(
        client,
        admin,
        *members,
        labels=LABELS,
        task_type="detection",
        settings={"gold_rate": 0.0, "overlap_rate": 0.0, **settings},
    )
    files = [("files", (f"{i}.png", img.png(40, 30, color=(i, 50, 90)))) for i in range(images)]
    uploaded = client.post(f"/api/v1/projects/{project['id']}/images", files=files, headers=admin.headers)
    assert uploaded.status_code == 201, uploaded.text
    return project, [f["image_id"] for f in uploaded.json()["files"]]


def box(label="car", x=1.0, y=2.0, w=10.0, h=8.0):
    return {"label": label, "x": x, "y": y, "w": w, "h": h}


def submit(client, project, account, image_id, boxes, key=None, **body):
    headers = {**account.headers, **({"Idempotency-Key": key} if key else {})}
    body = {"image_id": image_id, "boxes": boxes, **body}
    return client.post(f"/api/v1/projects/{project['id']}/annotations", json=body, headers=headers)


def current(client, project, account):
    response = client.get(f"/api/v1/projects/{project['id']}/labels", headers=account.headers)
    assert response.status_code == 200, response.text
    return {item["image_id"]: item for item in response.json()["items"]}


def test_boxes_are_validated_clipped_stored_replayed_and_corrected(client, admin, annotator):
    project, (first, second, third) = detection_project(client, admin, annotator, max_boxes=3)
    assert project["task_type"] == "detection" and project["settings"]["max_boxes"] == 3
    too_many = client.patch(
        f"/api/v1/projects/{project['id']}/settings", json={"settings": {"max_boxes": 10_001}}, headers=admin.headers
    )
    assert too_many.status_code == 422 and "max_boxes" in too_many.json()["error"]["message"]
    path = f"/api/v1/projects/{project['id']}"

    def refused(boxes, code, *phrases):
        response = submit(client, project, annotator, first, boxes)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == code and all(p in error["message"] for p in phrases), error
        return error

    refused([box(), box(label="truck")], "invalid_boxes", "box 1: unknown label 'truck'")
    refused([box(w=0)], "invalid_boxes", "box 0: w and h must be positive")
    refused([box(h=-3)], "invalid_boxes", "box 0: w and h must be positive")
    refused([box(), box(x=31.5, w=10)], "invalid_boxes", "box 1: it lies 1.5 px outside the 40x30")
    refused([box(y=-2)], "invalid_boxes", "box 0: it lies 2 px outside")
    error = refused([box()] * 5, "too_many_boxes", "at most 3 per image (setting max_boxes)", "boxes 3 to 4")
    assert error["details"] == {"boxes": 5, "max_boxes": 3}
    wrong_kind = client.post(
        f"{path}/annotations", json={"image_id": first, "label": "car"}, headers=annotator.headers
    ).json()["error"]
    assert wrong_kind["code"] == "wrong_answer_kind" and "detection project: send `boxes`" in wrong_kind["message"]
    assert client.get(f"{path}/annotations", headers=admin.headers).json()["items"] == []  # nothing stored

    # Within 1 px of the border a box is clipped and stored clipped; a leased task works as in classification.
    task = client.get(f"{path}/tasks/next", headers=annotator.headers).json()
    assert task["prelabel"] is None and task["prelabel_boxes"] is None and (task["width"], task["height"]) == (40, 30)
    overshoot = [box(x=-0.5, y=22.0, w=10.0, h=8.75), box(label="person", x=30.0, y=0.0, w=10.5, h=30.0)]
    stored = submit(client, project, annotator, task["image_id"], overshoot, key="k1", duration_ms=900)
    assert stored.status_code == 201, stored.text
    clipped = [box(x=0.0, y=22.0, w=9.5, h=8.0), box(label="person", x=30.0, y=0.0, w=10.0, h=30.0)]
    assert stored.json()["boxes"] == clipped and stored.json()["label"] is None
    replay = submit(client, project, annotator, task["image_id"], overshoot, key="k1", duration_ms=900)
    assert replay.status_code == 200 and replay.json() == stored.json()
    reused = submit(client, project, annotator, task["image_id"], [], key="k1", duration_ms=900)
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"

    # "No objects here" is an answer; a second answer by the same annotator is a correction with history.
    other = next(i for i in (first, second, third) if i != task["image_id"])
    assert submit(client, project, annotator, other, []).status_code == 201
    corrected = submit(client, project, annotator, task["image_id"], [box(label="person")])
    assert corrected.status_code == 201 and corrected.json()["supersedes_id"] == stored.json()["id"]
    history = client.get(f"{path}/images/{task['image_id']}/annotations", headers=annotator.headers).json()
    assert [(a["boxes"], a["is_current"]) for a in history] == [(clipped, False), ([box(label="person")], True)]
    labels = current(client, project, admin)
    assert labels[task["image_id"]]["boxes"] == [box(label="person")] and labels[other]["boxes"] == []
    assert labels[other]["label"] is None and labels[other]["label_count"] == 1
    assert set(labels) == {task["image_id"], other}  # the third image has no answer yet


def test_skip_overlap_gold_and_review_work_for_boxes(client, admin):
    a, b = (make_user(client.app, f"boxer{i}", Role.annotator) for i in range(2))
    project, images = detection_project(client, admin, a, b, images=2, overlap_rate=1.0, overlap_k=2)
    path = f"/api/v1/projects/{project['id']}"
    skipped = client.get(f"{path}/tasks/next", headers=a.headers).json()["image_id"]
    assert client.post(f"{path}/tasks/{skipped}/skip", headers=a.headers).status_code == 204
    kept = client.get(f"{path}/tasks/next", headers=a.headers).json()["image_id"]
    assert kept != skipped and client.get(f"{path}/tasks/next", headers=a.headers).status_code == 200  # same lease
    assert submit(client, project, a, kept, [box()]).status_code == 201
    assert client.get(f"{path}/tasks/next", headers=a.headers).status_code == 204  # skipped, not served again

    # Consensus boxes: both outlined the car (IoU 0.67), so its outline is the median of theirs; the person only
    # one of the two drew is left out, and that weak consensus asks for a third annotator (none is there yet).
    served = {client.get(f"{path}/tasks/next", headers=b.headers).json()["image_id"]}
    assert served == {kept}
    person = box(label="person", x=20.0, y=15.0, w=10.0, h=10.0)
    assert submit(client, project, b, kept, [box(x=3.0), person]).status_code == 201
    served.add(client.get(f"{path}/tasks/next", headers=b.headers).json()["image_id"])
    assert served == set(images)
    assert submit(client, project, b, skipped, []).status_code == 201
    labels = current(client, project, admin)
    assert (labels[kept]["boxes"], labels[kept]["labels_needed"]) == ([box(x=2.0)], 3)
    assert labels[skipped]["boxes"] == []
    assert submit(client, project, b, kept, [box()]).status_code == 201  # b corrects to a's answer
    assert current(client, project, admin)[kept]["boxes"] == [box()]

    # Gold boxes: answers match one to one by label and IoU >= 0.5; the gold boxes are the image's boxes.
    gold = client.put(f"{path}/gold", json={"image_id": kept, "boxes": [box(x=2.0)]}, headers=admin.headers)
    assert gold.status_code == 200, gold.text
    scores = {s["name"]: s for s in client.get(f"{path}/gold/scores", headers=admin.headers).json()}
    assert (scores["boxer0"]["correct"], scores["boxer1"]["correct"]) == (1, 1)
    assert current(client, project, admin)[kept] | {"boxes": None} == {
        "image_id": kept, "label": None, "boxes": None, "tie": False, "label_count": 2, "labels_needed": 3,
        "gold": True,
    }  # fmt: skip
    bad_gold = client.put(f"{path}/gold", json={"image_id": kept, "label": "car"}, headers=admin.headers)
    assert bad_gold.status_code == 422 and bad_gold.json()["error"]["code"] == "wrong_answer_kind"
    client.put(f"{path}/gold", json={"image_id": kept, "boxes": [box(x=6.0), box()]}, headers=admin.headers)
    scores = {s["name"]: s for s in client.get(f"{path}/gold/scores", headers=admin.headers).json()}
    assert scores["boxer0"]["correct"] == 0  # one gold box left unmatched
    assert client.delete(f"{path}/gold/{kept}", headers=admin.headers).status_code == 200

    # Review asks a third annotator, who answers with boxes like anyone.
    c = make_user(client.app, "boxer2", Role.annotator)
    client.post(f"{path}/members", json={"user_id": c.id}, headers=admin.headers)
    review = client.post(f"{path}/review", json={"image_ids": [skipped], "reason": "cars?"}, headers=admin.headers)
    assert review.json()["queued"] == [skipped]
    # The car image still asks for the third label its weak consensus wanted; c passes on it.
    assert client.get(f"{path}/tasks/next", headers=c.headers).json()["image_id"] == kept
    assert client.post(f"{path}/tasks/{kept}/skip", headers=c.headers).status_code == 204
    task = client.get(f"{path}/tasks/next", headers=c.headers).json()
    assert (task["image_id"], task["review_reason"]) == (skipped, "cars?")
    assert submit(client, project, c, skipped, [box(label="person")]).status_code == 201
    # One of the two drew a person: not a majority, so no box, and the image waits for a third opinion.
    now = current(client, project, admin)[skipped]
    assert (now["boxes"], now["labels_needed"]) == ([], 3)

    # Agreement: per pair, boxes matched one to one by IoU on the images both answered; all pairs pooled.
    agreement = client.get(f"{path}/agreement", headers=admin.headers).json()
    assert (agreement["task_type"], agreement["images"], agreement["iou_threshold"]) == ("detection", 2, 0.5)
    (ab, bc) = agreement["pairs"]
    assert (ab["annotator_a"]["name"], ab["annotator_b"]["name"], ab["images"]) == ("boxer0", "boxer1", 1)
    assert ab["overall"] | {"cohen_kappa": None} == {
        "first_boxes": 1, "second_boxes": 1, "matched": 1, "precision": 1.0, "recall": 1.0, "f1": 1.0,
        "mean_iou": 1.0, "label_agreement": 1.0, "cohen_kappa": None,
    }  # fmt: skip
    assert ab["overall"]["cohen_kappa"]["value"] is None and ab["overall"]["cohen_kappa"]["reason"]  # one class
    assert (bc["overall"]["first_boxes"], bc["overall"]["second_boxes"], bc["overall"]["matched"]) == (0, 1, 0)
    assert bc["overall"]["recall"] is None and bc["overall"]["f1"] == 0.0  # "no objects" against one box
    pooled = agreement["overall"]["overall"]
    assert (pooled["matched"], pooled["precision"], pooled["recall"]) == (1, 0.5, 1.0)
    assert pooled["f1"] == pytest.approx(2 / 3)


def test_classification_projects_refuse_boxes_and_detection_projects_train_only_detectors(
    app, client, admin, annotator
):
    classes = make_project(client, admin, annotator, settings={"gold_rate": 0.0, "overlap_rate": 0.0})
    files = [("files", ("a.png", img.png(8, 8)))]
    (image,) = client.post(f"/api/v1/projects/{classes['id']}/images", files=files, headers=admin.headers).json()[
        "files"
    ]
    wrong = submit(client, classes, annotator, image["image_id"], [box()])
    assert wrong.status_code == 422 and "classification project: send `label`" in wrong.json()["error"]["message"]

    project, images = detection_project(
        client, admin, annotator, images=1, training={"min_new_labels": 1, "debounce_seconds": 0}
    )
    assert submit(client, project, annotator, images[0], [box()]).status_code == 201
    rt = app.state.runtime
    path = f"/api/v1/projects/{project['id']}"
    for kind in ("embed", "distill"):  # label_quality finds box label issues (tests/test_label_issues.py)
        job = client.post(f"{path}/jobs", json={"kind": kind}, headers=admin.headers)
        assert job.status_code == 422 and job.json()["error"]["code"] == "not_for_detection"
        assert "where the flywheel trains detectors (kind train)" in job.json()["error"]["message"]
    # A parameter only the other task type's label_quality reads is refused, not silently ignored.
    for target, params in ((path, {"filter_by": "both"}), (f"/api/v1/projects/{classes['id']}", {"score_below": 0.5})):
        job = client.post(f"{target}/jobs", json={"kind": "label_quality", "params": params}, headers=admin.headers)
        assert job.status_code == 422 and job.json()["error"]["code"] == "param_not_for_task", job.json()
        assert f"{next(iter(params))!r} applies to" in job.json()["error"]["message"]
        assert client.get(f"{target}/jobs", headers=admin.headers).json() == []
    nightly = client.put(f"{path}/schedules", json={"drift": "0 3 * * *"}, headers=admin.headers)
    assert nightly.status_code == 422 and nightly.json()["error"]["code"] == "not_for_detection"
    assert client.put(f"{path}/schedules", json={}, headers=admin.headers).json() == []  # clearing stays possible
    # The policy trains detectors as boxes arrive (a refresh needs a champion): min_new_labels 1 starts a training.
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == [JobKind.train]
    refused = client.get(f"{path}/export?format=csv", headers=admin.headers)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "not_for_detection"
    nothing_yet = client.get(f"{path}/agreement", headers=admin.headers).json()
    assert (
        nothing_yet["pairs"] == []
        and nothing_yet["overall"] is None
        and "needs two annotators" in nothing_yet["reason"]
    )


def test_boxes_are_checked_against_the_upright_image(client, admin, annotator):
    project = make_project(client, admin, annotator, labels=LABELS, task_type="detection")
    files = [("files", ("turned.jpg", img.jpeg_with_orientation(6, size=(60, 20))))]  # upright: 20 wide, 60 high
    (image,) = client.post(f"/api/v1/projects/{project['id']}/images", files=files, headers=admin.headers).json()[
        "files"
    ]
    task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers).json()
    assert (task["width"], task["height"]) == (20, 60)  # the frame the labeling page draws boxes in
    tall = submit(client, project, annotator, image["image_id"], [box(x=0, y=0, w=20, h=60)])
    assert tall.status_code == 201, tall.text
    wide = submit(client, project, annotator, image["image_id"], [box(x=0, y=0, w=60, h=20)])
    assert wide.status_code == 422 and "outside the 20x60 upright image" in wide.json()["error"]["message"]
