"""Consensus boxes and box scorecards over HTTP: boxes of several annotators merge into an image's current
boxes, a weak consensus asks for one more answer, snapshots freeze the consensus boxes, and scorecards catch
an annotator who draws one box around touching objects."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select

from flywheel.training.snapshots import build_snapshot, load_box_items
from storage.models import Image, Project, Role
from tests import imagefactory as img
from tests.factories import make_project, make_user

LABELS = ["car", "person"]


def box(label="car", x=4.0, y=10.0, w=20.0, h=20.0):
    return {"label": label, "x": x, "y": y, "w": w, "h": h}


def setup(client, admin, annotators, images, **settings):
    members = [make_user(client.app, name, Role.annotator) for name in annotators]
    project = make_project(
        client,
        admin,
        *members,
        labels=LABELS,
        task_type="detection",
        settings={"gold_rate": 0.0, "overlap_rate": 1.0, "overlap_k": len(members), **settings},
    )
    files = [("files", (f"{i}.png", img.png(64, 48, color=(i, 80, 20)))) for i in range(images)]
    uploaded = client.post(f"/api/v1/projects/{project['id']}/images", files=files, headers=admin.headers)
    assert uploaded.status_code == 201, uploaded.text
    return project, members, [f["image_id"] for f in uploaded.json()["files"]]


def answer(client, project, account, image_id, boxes):
    body = {"image_id": image_id, "boxes": boxes}
    response = client.post(f"/api/v1/projects/{project['id']}/annotations", json=body, headers=account.headers)
    assert response.status_code == 201, response.text


def snapshot_items(client, project) -> dict[int, list[dict]]:
    rt = client.app.state.runtime
    with rt.db.session() as session:
        snapshot = build_snapshot(session, rt.blobs, project=session.get_one(Project, project["id"]))
        return {item.image_id: item.boxes for item in load_box_items(rt.blobs, snapshot)[1]}


def test_consensus_boxes_snapshots_and_a_merger_flagged(client, admin):
    # Two touching objects per image: careful annotators outline each, the merger draws one box around both.
    car, person = box(), box(label="person", x=24.0)
    project, (careful, jittery, merger), images = setup(client, admin, ["careful", "jittery", "merger"], 21)
    path = f"/api/v1/projects/{project['id']}"
    gold, overlapped = images[0], images[1:]
    assert client.put(f"{path}/gold", json={"image_id": gold, "boxes": [car, person]}, headers=admin.headers).is_success
    for image_id in images:
        answer(client, project, careful, image_id, [car, person])
        answer(client, project, jittery, image_id, [box(x=5.0), box(label="person", x=25.0, w=19.0)])
        answer(client, project, merger, image_id, [box(w=40.0)])

    # Each object's outline is the median of the two outlines (the merge box only votes for what it covers).
    labels = {i["image_id"]: i for i in client.get(f"{path}/labels?limit=100", headers=admin.headers).json()["items"]}
    assert labels[gold]["boxes"] == [car, person] and labels[gold]["gold"]
    assert labels[overlapped[0]]["boxes"] == [box(x=4.5), box(label="person", x=24.5, w=19.5)]
    assert labels[overlapped[0]]["labels_needed"] == 3  # two of three outlined each: a firm majority

    # A snapshot freezes the consensus boxes, with boxes counted per class.
    rt = client.app.state.runtime
    with rt.db.session() as session:
        snapshot = build_snapshot(session, rt.blobs, project=session.get_one(Project, project["id"]))
        classes, items = load_box_items(rt.blobs, snapshot)
        stats = snapshot.stats
    assert classes == LABELS and len(items) == 21
    assert {i.image_id: i.boxes for i in items} == {image_id: labels[image_id]["boxes"] for image_id in images}
    assert stats["train"] + stats["test"] == 21
    assert sum(stats["per_class"]["train"].values()) + sum(stats["per_class"]["test"].values()) == 42

    cards = client.get(f"{path}/annotators", headers=admin.headers).json()
    assert (cards["task_type"], cards["iou_threshold"], cards["tight_iou"], cards["min_images"]) == (
        "detection",
        0.5,
        0.75,
        20,
    )
    by_name = {c["name"]: c for c in cards["annotators"]}
    merged = by_name["merger"]["against_consensus"]
    assert (merged["images"], merged["objects"], merged["boxes"], merged["merges"], merged["merged_objects"]) == (
        20,
        40,
        20,
        20,
        40,
    )
    assert (merged["missed"], merged["extra"], merged["matched"], merged["recall"]) == (0, 0, 0, 0.0)
    (flag,) = merged["flags"]
    assert flag["flag"] == "merges" and "20 boxes each outline two or more objects" in flag["evidence"]
    assert by_name["merger"]["against_gold"]["merges"] == 1 and by_name["merger"]["against_gold"]["images"] == 1
    for name in ("careful", "jittery"):
        mine = by_name[name]["against_consensus"]
        assert (mine["matched"], mine["missed"], mine["extra"], mine["flags"]) == (40, 0, 0, [])
        assert by_name[name]["against_gold"]["recall"] == 1.0
    assert by_name["careful"]["answers"] == 21 and by_name["merger"]["boxes"] == 21
    loose = by_name["jittery"]["against_consensus"]
    assert loose["loose"] == 0 and 0.9 < loose["mean_iou"] < 1.0

    # Excluding the careful annotator leaves the jittery outlines, each confirmed by the merger's box around both.
    excluded = client.post(
        f"{path}/annotators/{careful.id}/exclusion", json={"reason": "testing"}, headers=admin.headers
    )
    assert excluded.status_code == 201, excluded.text
    summary = excluded.json()["consensus"]
    assert (summary["method"], summary["changed"], summary["excluded_annotators"]) == ("majority", 20, 1)
    assert "Dawid-Skene needs 20" in summary["reason"]  # the merger outlines nothing, so no box has two outlines
    labels = {i["image_id"]: i for i in client.get(f"{path}/labels?limit=100", headers=admin.headers).json()["items"]}
    assert labels[overlapped[0]]["boxes"] == [box(x=5.0), box(label="person", x=25.0, w=19.0)]
    assert labels[gold]["boxes"] == [car, person]


@pytest.mark.postgres  # the overview's boxes per class are counted by triggers that read the boxes' JSON
def test_weak_box_consensus_asks_for_more_and_the_quorum_is_a_setting(client, admin):
    project, (a, b, c), (image_id, other) = setup(client, admin, ["a", "b", "c"], 2, review_max_labels=4)
    pid = project["id"]
    path = f"/api/v1/projects/{pid}"
    # Two of three drew the person: a box at exactly the quorum is weak, so the image asks a fourth annotator.
    answer(client, project, a, image_id, [box(), box(label="person", x=30.0, w=10.0)])
    answer(client, project, b, image_id, [box(), box(label="person", x=30.0, w=10.0)])
    answer(client, project, c, image_id, [box()])
    labels = {i["image_id"]: i for i in client.get(f"{path}/labels", headers=admin.headers).json()["items"]}
    assert len(labels[image_id]["boxes"]) == 2 and labels[image_id]["labels_needed"] == 4
    assert labels[image_id]["tie"]  # weak, and waiting for the fourth answer it asked for
    # Not settled yet: the JSON export marks it weak and a snapshot leaves it out.
    (exported,) = client.get(f"{path}/export?format=json", headers=admin.headers).json()
    assert (exported["image_id"], exported["weak"]) == (image_id, True)
    assert snapshot_items(client, project) == {}
    d = make_user(client.app, "d", Role.annotator)
    client.post(f"{path}/members", json={"user_id": d.id}, headers=admin.headers)
    task = client.get(f"{path}/tasks/next", headers=d.headers).json()
    assert task["image_id"] == image_id and "boxes drawn so far disagree" in task["review_reason"]
    # The fourth finds the car only: the person, drawn by two of four, stays doubtful, and review has asked all
    # it may, so the image is listed for an admin to settle with gold boxes.
    answer(client, project, d, image_id, [box()])
    weak = client.get(f"{path}/consensus/weak", headers=admin.headers).json()
    assert weak["task_type"] == "detection" and weak["next_after"] is None
    (item,) = weak["items"]
    assert (item["image_id"], item["reasons"], item["label_count"]) == (image_id, ["half_drawn"], 4)
    assert [len(answer["boxes"]) for answer in item["answers"]] == [2, 2, 1, 1]
    assert snapshot_items(client, project) == {image_id: [box()]}  # as settled as it gets: the car

    # With box_quorum 1, a box anyone drew is in the consensus.
    settings = {"settings": {"box_quorum": 1}}
    assert client.patch(f"{path}/settings", json=settings, headers=admin.headers).status_code == 200
    answer(client, project, a, other, [box()])
    answer(client, project, b, other, [box(label="person", x=40.0, w=10.0)])
    labels = {i["image_id"]: i for i in client.get(f"{path}/labels", headers=admin.headers).json()["items"]}
    assert sorted(b["label"] for b in labels[other]["boxes"]) == ["car", "person"]
    counted: Counter[tuple[str, str]] = Counter()
    with client.app.state.runtime.db.session() as session:
        for split, boxes in session.execute(select(Image.split, Image.consensus_boxes).where(Image.project_id == pid)):
            counted.update((drawn["label"], split.value) for drawn in boxes or ())
    classes = client.get(f"{path}/overview", headers=admin.headers).json()["classes"]
    assert {(c["label"], s): c[s] for c in classes for s in ("train", "test") if c[s]} == counted and counted


def test_dawid_skene_settles_the_class_of_a_box_two_annotators_disagree_on(client, admin):
    project, (a, b, confuser), images = setup(client, admin, ["a", "b", "confuser"], 22)
    path = f"/api/v1/projects/{project['id']}"
    car, person = box(), box(label="person", x=24.0)
    for image_id in images[:20]:  # the confuser calls every person a car
        for annotator in (a, b):
            answer(client, project, annotator, image_id, [car, person])
        answer(client, project, confuser, image_id, [car, box(x=24.0)])
    last = images[20]
    answer(client, project, a, last, [person])
    answer(client, project, confuser, last, [box(x=24.0)])

    def boxes_of(image_id):
        items = client.get(f"{path}/labels?limit=100", headers=admin.headers).json()["items"]
        return next(i for i in items if i["image_id"] == image_id)

    assert boxes_of(last)["boxes"] == [box(x=24.0)] and boxes_of(last)["tie"]  # a plain vote: a tie, car first
    refit = client.post(f"{path}/consensus", headers=admin.headers).json()
    assert (refit["method"], refit["reason"], refit["differs_from_majority"]) == ("dawid_skene", None, 1)
    assert boxes_of(last)["boxes"] == [person] and not boxes_of(last)["tie"]
    # Between refits, each answer is settled with the fitted skills too.
    answer(client, project, confuser, images[21], [box(x=24.0)])
    answer(client, project, a, images[21], [person])
    assert boxes_of(images[21])["boxes"] == [person]


def test_the_same_answers_give_the_same_boxes_and_an_image_whose_answers_stop_counting_asks_again(client, admin):
    project, (a, b, c), (image_id,) = setup(client, admin, ["a", "b", "c"], 1)
    path = f"/api/v1/projects/{project['id']}"
    for annotator, x in ((a, 0.0), (b, 6.0), (c, 12.0)):
        answer(client, project, annotator, image_id, [box(x=x)])

    def current(image_id):
        items = client.get(f"{path}/labels", headers=admin.headers).json()["items"]
        return next((i for i in items if i["image_id"] == image_id), None)

    first = current(image_id)["boxes"]
    answer(client, project, a, image_id, [box(x=0.0)])  # the same answer again: a correction that changes nothing
    assert current(image_id)["boxes"] == first
    refit = client.post(f"{path}/consensus", headers=admin.headers).json()
    assert refit["changed"] == 0 and current(image_id)["boxes"] == first

    # The only answer of an image stops counting: the image has no boxes and asks for another answer.
    project, (a, b), (single,) = setup(client, admin, ["a2", "b2"], 1, overlap_rate=0.0)
    path = f"/api/v1/projects/{project['id']}"
    answer(client, project, a, single, [box()])
    assert current(single)["labels_needed"] == 1
    excluded = client.post(f"{path}/annotators/{a.id}/exclusion", json={"reason": "test"}, headers=admin.headers)
    assert excluded.status_code == 201, excluded.text
    assert current(single) is None
    task = client.get(f"{path}/tasks/next", headers=b.headers).json()
    assert task["image_id"] == single and "boxes drawn so far disagree" in task["review_reason"]
