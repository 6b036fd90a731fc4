"""Detectors in the flywheel: trained in the background job from a detection snapshot, evaluated with COCO's
figures (pycocotools) against a baseline, exported to ONNX checked against PyTorch, promoted by a paired test."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.app import create_app
from storage.models import Image, ModelVersion
from storage.settings import load_settings


def test_a_detector_trains_in_the_job_and_its_card_shows_coco_figures_errors_and_the_decision(detector):
    client, engineer = detector.client, detector.engineer
    job = client.get(f"/api/v1/jobs/{detector.train_job_id}", headers=engineer.headers).json()
    assert job["result"]["model_id"] == detector.champion_id and "mAP@.5" in job["result"]["message"]
    card = client.get(f"/api/v1/models/{detector.champion_id}", headers=engineer.headers).json()
    assert card["status"] == "champion" and card["architecture"] == "centernet_small"
    assert card["input"]["size"] == 64 and card["labels"] == ["square", "disc"]
    metrics = card["metrics"]
    assert metrics["task"] == "detection"
    assert metrics["test_map50"] > metrics["baseline_map50"] and metrics["test_map50"] >= metrics["test_map"]
    assert set(metrics["per_class"]) == {"square", "disc"}
    for figures in metrics["per_class"].values():
        assert figures["objects"] > 0 and 0 <= figures["ap"] <= figures["ap50"] <= 1 and 0 <= figures["recall"] <= 1
    assert set(metrics["errors"]) == {"missed", "false_boxes", "wrong_class", "poor_localization"}
    # The worst error images carry what the console's gallery draws: the snapshot's boxes and the detector's.
    assert all(set(e) == {"image_id", "truth", "predicted", *metrics["errors"]} for e in metrics["error_images"][:100])
    for entry in metrics["error_images"]:
        assert entry["truth"] == detector.truth[entry["image_id"]]  # the consensus boxes are the annotator's
        assert all(
            box["label"] in ("square", "disc") and box["score"] >= metrics["operating_score"]
            for box in entry["predicted"]
        )
    assert metrics["onnx_check"]["min_iou"] >= 0.99 and metrics["onnx_check"]["max_score_difference"] <= 1e-4
    assert metrics["onnx_check"]["boxes_compared"] > 0
    decision = card["decision"]
    assert decision["promote"] and decision["compared_with"] == "baseline" and "mAP@.5" in decision["reason"]
    assert card["snapshot"]["stats"]["boxes"]["train"] > 0 and card["seed"] == 0


def _matched(found: list[dict], truth: list[dict], iou: float = 0.5) -> int:
    """Truth boxes a found box of the same class overlaps at ``iou`` (greedy; the scenes' shapes never overlap)."""
    from annotation.boxes import Box, iou_matrix

    if not found or not truth:
        return 0
    plain = [Box(b["label"], b["x"], b["y"], b["w"], b["h"]) for b in found]
    ious = iou_matrix([Box(**b) for b in truth], plain)
    return sum(
        any(ious[i, j] >= iou and found[j]["label"] == t["label"] for j in range(len(found)))
        for i, t in enumerate(truth)
    )


def test_predict_answers_boxes_and_tasks_carry_box_prelabels_from_the_onnx_detector(detector):
    from tests.shapes import scenes

    client, project = detector.client, detector.project
    path = f"/api/v1/projects/{project['id']}"
    fresh = scenes(6, seed=99)
    files = [("files", (f"new{i}.png", png, "image/png")) for i, (png, _) in enumerate(fresh)]
    answer = client.post(f"{path}/predict", files=files, headers=detector.engineer.headers)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["model_version"] == f"model-{detector.champion_id}"
    predictions = result["predictions"]
    assert [p["filename"] for p in predictions] == [f"new{i}.png" for i in range(6)]
    assert all(p["label"] is None and p["boxes"] is not None for p in predictions)
    for p in predictions:
        for b in p["boxes"]:
            assert b["label"] in ("square", "disc") and 0.3 <= b["score"] <= 1
            assert 0 <= b["x"] and b["x"] + b["w"] <= 64 and 0 <= b["y"] and b["y"] + b["h"] <= 64
    objects = sum(len(boxes) for _, boxes in fresh)
    found = sum(_matched(p["boxes"], boxes) for p, (_, boxes) in zip(predictions, fresh, strict=True))
    assert found >= objects / 2, (found, objects)  # a detector of a few seconds finds most shapes

    # The next task (one of the 16 unlabeled scenes) comes with the detector's boxes, in the image's pixels.
    task = client.get(f"{path}/tasks/next", headers=detector.annotator.headers).json()
    suggested = task["prelabel_boxes"]
    assert task["prelabel"] is None and suggested["model_version"] == f"model-{detector.champion_id}"
    assert all(b["score"] >= 0.3 and b["label"] in ("square", "disc") for b in suggested["boxes"])
    by_predict = client.post(
        f"{path}/predict",
        files=[("files", ("t.png", client.get(task["content_url"], headers=detector.admin.headers).content))],
        headers=detector.engineer.headers,
    ).json()["predictions"][0]["boxes"]
    assert suggested["boxes"] == by_predict  # one detector, one preprocessing, the same boxes

    no_files = client.post(f"{path}/predict", files=[("files", ("x.png", b""))], headers=detector.engineer.headers)
    assert no_files.status_code == 422 and no_files.json()["error"]["code"] == "empty_file"

    # Each answer is logged (top box's class and score, the boxes, the model time) as a classifier's is; capture is
    # off by default, then takes the images whose top box scores lowest under `monitoring.capture`.

    from storage.models import ImageSource, PredictionLog

    def logged() -> list[PredictionLog]:
        with detector.app.state.runtime.db.read_session() as session:
            return list(session.scalars(select(PredictionLog).order_by(PredictionLog.id)))

    rows = logged()
    assert len(rows) == 7 and {r.model_id for r in rows} == {detector.champion_id}  # the six, then the task's image
    for row, p in zip(rows, predictions, strict=False):
        assert row.boxes == p["boxes"] and row.latency_ms > 0 and row.role == "served" and row.image_id is None
        top = max(p["boxes"], key=lambda b: b["score"]) if p["boxes"] else None
        assert (row.label, row.confidence) == ((top["label"], top["score"]) if top else (None, 0.0))
    scores = sorted(r.confidence for r in rows[:6])
    below = (scores[1] + scores[2]) / 2  # the two least confident answers are captured
    settings = {"settings": {"monitoring": {"capture": "low_confidence", "capture_below": below}}}
    assert client.patch(path + "/settings", json=settings, headers=detector.admin.headers).status_code == 200
    assert client.post(f"{path}/predict", files=files, headers=detector.engineer.headers).status_code == 200
    with detector.app.state.runtime.db.read_session() as session:
        captured = set(session.scalars(select(Image.original_name).where(Image.source == ImageSource.production)))
    assert captured == {
        name for name, r in zip([f"new{i}.png" for i in range(6)], rows, strict=False) if r.confidence < below
    }
    assert len(captured) == 2 and {r.image_id is not None for r in logged()[7:]} == {True, False}

    # An image whose file is gone is served without boxes, and blames no detector: /predict still answers.
    with detector.app.state.runtime.db.read_session() as session:
        unlabeled = session.scalars(select(Image.sha256).where(Image.label_count == 0)).all()
    for sha256 in unlabeled:
        detector.app.state.runtime.blobs.path(sha256).unlink()
    task = client.get(f"{path}/tasks/next", headers=detector.annotator.headers)
    assert task.status_code == 200 and task.json()["prelabel_boxes"] is None, task.text
    assert client.post(f"{path}/predict", files=files[:1], headers=detector.engineer.headers).status_code == 200

    # The detector's files break (a fresh process loads them): tasks still come, without boxes; /predict says so.
    settings = detector.app.state.runtime.settings
    with detector.app.state.runtime.db.read_session() as session:
        onnx = session.get_one(ModelVersion, detector.champion_id).onnx_sha256
    detector.app.state.runtime.blobs.path(onnx).write_bytes(b"not an onnx model")
    broken = create_app(
        load_settings(data_dir=settings.data_dir, database_url=settings.resolved_database_url), migrate=False
    )
    with TestClient(broken) as restarted:
        task = restarted.get(f"{path}/tasks/next", headers=detector.annotator.headers)
        assert task.status_code == 200 and task.json()["prelabel_boxes"] is None, task.text
        unavailable = restarted.post(f"{path}/predict", files=files[:1], headers=detector.engineer.headers)
        assert unavailable.status_code == 503 and unavailable.json()["error"]["code"] == "model_unavailable"
    broken.state.runtime.db.dispose()


def test_the_human_reference_of_a_detection_project_is_box_f1_against_consensus_on_test_images(app, client, admin):
    from annotation.reports import human_reference
    from storage.models import Role
    from tests import imagefactory as img
    from tests.factories import make_project, make_user

    careful, sloppy = make_user(app, "careful", Role.annotator), make_user(app, "sloppy", Role.annotator)
    settings = {"overlap_rate": 1.0, "overlap_k": 2, "gold_rate": 0.0}
    project = make_project(
        client, admin, careful, sloppy, labels=["car", "person"], task_type="detection", settings=settings
    )
    files = [("files", (f"{i}.png", img.png(40, 30, color=(i, 50, 90)))) for i in range(30)]
    uploaded = client.post(f"/api/v1/projects/{project['id']}/images", files=files, headers=admin.headers).json()
    path = f"/api/v1/projects/{project['id']}"
    car = {"label": "car", "x": 2.0, "y": 2.0, "w": 12.0, "h": 10.0}
    extra = {"label": "person", "x": 25.0, "y": 15.0, "w": 8.0, "h": 8.0}
    with app.state.runtime.db.read_session() as session:
        assert human_reference(session, project["id"])["reason"]  # nobody has answered yet
    for account, boxes in ((careful, [car]), (sloppy, [car, extra])):
        for _ in uploaded["files"]:
            task = client.get(f"{path}/tasks/next", headers=account.headers).json()
            body = {"image_id": task["image_id"], "boxes": boxes}
            assert client.post(f"{path}/annotations", json=body, headers=account.headers).status_code == 201
    with app.state.runtime.db.read_session() as session:
        reference = human_reference(session, project["id"])
    assert reference["reason"] is None and reference["items"] > 0  # the test split's images, about 1 in 5
    by_name = {a["name"]: a for a in reference["annotators"]}
    assert by_name["careful"]["f1"] == 1.0 and by_name["sloppy"]["f1"] == pytest.approx(2 / 3)
    assert by_name["sloppy"]["boxes"] == 2 * by_name["sloppy"]["images"]
    assert reference["pooled_f1"] == pytest.approx(2 * 2 / (3 + 2)) and reference["median_f1"] == pytest.approx(5 / 6)


def test_mining_puts_uncertain_images_first_and_sends_contradicted_boxes_back(detector):

    from storage.models import Role, Split
    from tests.factories import make_user
    from tests.jobs import run

    client, engineer, project = detector.client, detector.engineer, detector.project
    path = f"/api/v1/projects/{project['id']}"
    jobs = client.get(f"{path}/jobs", headers=engineer.headers).json()
    (mine,) = [j for j in jobs if j["kind"] == "mine"]  # the promotion set it off
    assert mine["params"] == {"trigger": "promotion"}
    run(detector.app, mine["id"])
    result = client.get(f"/api/v1/jobs/{mine['id']}", headers=engineer.headers).json()
    assert result["status"] == "succeeded", result
    mined = result["result"]
    assert mined["scored"] == 16 and mined["strategy"] == "margin_kcenter" and mined["missing_count"] == 0
    assert mined["chosen"] == 16 and len(set(mined["first"])) == 16
    task = client.get(f"{path}/tasks/next", headers=detector.annotator.headers).json()
    assert task["image_id"] == mined["first"][0]  # the strategy's first choice is served first

    # An answer that leaves out a shape the detector sees goes back, with the reason, to another annotator.
    second = make_user(detector.app, "ann2", Role.annotator)
    added = client.post(f"{path}/members", json={"user_id": second.id}, headers=detector.admin.headers)
    assert added.status_code == 201, added.text
    labeled = client.get(f"{path}/labels", headers=engineer.headers).json()["items"]
    with detector.app.state.runtime.db.read_session() as session:
        train_ids = set(session.scalars(select(Image.id).where(Image.split == Split.train)))
    victim = next(i for i in labeled if i["image_id"] in train_ids and len(i["boxes"]) >= 2)
    body = {"image_id": victim["image_id"], "boxes": victim["boxes"][1:]}  # a correction: its first box dropped
    assert client.post(f"{path}/annotations", json=body, headers=detector.annotator.headers).status_code == 201
    again = client.post(f"{path}/jobs", json={"kind": "mine"}, headers=engineer.headers).json()
    run(detector.app, again["id"])
    relabels = client.get(f"/api/v1/jobs/{again['id']}", headers=engineer.headers).json()["result"]["relabel"]
    sent = {r["image_id"]: r["reason"] for r in relabels}
    assert victim["image_id"] in sent, relabels
    assert sent[victim["image_id"]].startswith("relabel: the detector finds a")
    assert "that no box marks" in sent[victim["image_id"]]
    review = client.get(f"{path}/tasks/next", headers=second.headers).json()
    assert review["image_id"] in sent and review["review_reason"] == sent[review["image_id"]]


def test_a_second_detector_is_judged_against_the_champion_on_the_same_test_images(detector):
    from tests.jobs import run
    from tests.shapes import scenes

    client, engineer = detector.client, detector.engineer
    path = f"/api/v1/projects/{detector.project['id']}"
    again = client.post(f"{path}/jobs", json={"kind": "train", "params": {"force": True}}, headers=engineer.headers)
    assert again.status_code == 201, again.text
    run(detector.app, again.json()["id"])
    result = client.get(f"/api/v1/jobs/{again.json()['id']}", headers=engineer.headers).json()["result"]
    card = client.get(f"/api/v1/models/{result['model_id']}", headers=engineer.headers).json()
    decision = card["decision"]
    # The same snapshot, recipe and seed make the same detector: no difference, so "not worse", and promoted.
    assert decision["compared_with"] == "champion" and decision["champion_id"] == detector.champion_id
    assert decision["rule"] == "not worse" and decision["promote"] and card["status"] == "champion"
    assert decision["candidate_map50"] == decision["champion_map50"] == card["metrics"]["test_map50"]
    assert decision["p_value"] == 1.0 and decision["statistic"] is None and "Wilcoxon" in decision["reason"]
    old = client.get(f"/api/v1/models/{detector.champion_id}", headers=engineer.headers).json()
    assert old["status"] == "retired"
    rollback = client.post(
        f"/api/v1/models/{detector.champion_id}/promote", json={"reason": "rollback"}, headers=engineer.headers
    )
    assert rollback.status_code == 200 and rollback.json()["status"] == "champion"

    # The champion's file goes missing: the detector before it answers, and says so; pre-labels come from it too.
    with detector.app.state.runtime.db.session() as session:
        session.get_one(ModelVersion, detector.champion_id).onnx_sha256 = "0" * 64
    ((png, _),) = scenes(1, seed=7)
    answer = client.post(f"{path}/predict", files=[("files", ("a.png", png))], headers=engineer.headers).json()
    assert (answer["model_id"], answer["fallback"]) == (result["model_id"], True), answer
    assert f"model {detector.champion_id} cannot answer" in answer["fallback_reason"]
    task = client.get(f"{path}/tasks/next", headers=detector.annotator.headers).json()
    assert task["prelabel_boxes"]["model_version"] == f"model-{result['model_id']}"


def test_a_fresh_update_fine_tunes_the_detector_heads_on_new_labels_serves_box_prelabels_and_mining_reads_it(detector):

    from flywheel.policy import start_policy_jobs
    from storage.models import Job, JobKind, JobStatus, Split
    from tests.jobs import run

    app, client, engineer, annotator = detector.app, detector.client, detector.engineer, detector.annotator
    path = f"/api/v1/projects/{detector.project['id']}"
    rt = app.state.runtime
    # The project's default gate (0.005 mAP@.5): the refresh must hold the champion's figures, not a looser bar.
    settings = {"settings": {"mining": {"strategy": "disagreement"}}}
    assert client.patch(f"{path}/settings", json=settings, headers=detector.admin.headers).status_code == 200
    answered, annotations = [], []
    for _ in range(4):  # four of the unlabeled scenes answered after the champion was trained
        task = client.get(f"{path}/tasks/next", headers=annotator.headers).json()
        body = {"image_id": task["image_id"], "boxes": detector.truth[task["image_id"]]}
        stored = client.post(f"{path}/annotations", json=body, headers=annotator.headers)
        assert stored.status_code == 201, stored.text
        answered.append(task["image_id"])
        annotations.append(stored.json()["id"])
    assert start_policy_jobs(rt.db, rt.transport, project_id=detector.project["id"]) == [JobKind.refresh]
    with rt.db.read_session() as session:
        refresh = session.scalars(select(Job).where(Job.kind == JobKind.refresh)).one()
        new_train = set(session.scalars(select(Image.id).where(Image.id.in_(answered), Image.split == Split.train)))
    assert run(app, refresh.id) == JobStatus.succeeded
    result = client.get(f"/api/v1/jobs/{refresh.id}", headers=engineer.headers).json()["result"]
    fresh = result["model_id"]
    card = client.get(f"/api/v1/models/{fresh}", headers=engineer.headers).json()
    assert card["kind"] == "refresh" and card["parent_id"] == detector.champion_id
    metrics, decision = card["metrics"], card["decision"]
    assert metrics["new_items"] == len(new_train) and metrics["replay_items"] >= 32 and metrics["loss_last"] > 0
    assert metrics["onnx_check"]["min_iou"] >= 0.99 and metrics["onnx_check"]["max_score_difference"] <= 1e-4
    # Judged like a training, against the champion on the same test images, before it may serve.
    assert decision["compared_with"] == "champion" and decision["champion_id"] == detector.champion_id
    assert "Wilcoxon" in decision["reason"] and decision["promote"], decision
    # Not worse than its champion on the fixed test images: mAP@.5 within the gate, mean F1 at the shown score not
    # below by more than one box on one of them.
    assert decision["tolerance"] == 0.005 and decision["candidate_map50"] >= decision["champion_map50"] - 0.005
    assert decision["candidate_mean_f1"] >= decision["champion_mean_f1"] - 0.5 / metrics["test_items"], decision
    assert result["serving"] and card["status"] == "candidate" and card["labels_through"] == max(annotations)
    task = client.get(f"{path}/tasks/next", headers=annotator.headers).json()
    assert task["prelabel_boxes"]["model_version"] == f"model-{fresh}"  # pre-labels from a model that saw them
    assert client.get(f"{path}/models/champion", headers=engineer.headers).json()["id"] == detector.champion_id
    assert start_policy_jobs(rt.db, rt.transport, project_id=detector.project["id"]) == []  # nothing new since

    # Mining by disagreement reads the champion and its fresh update.
    mine = client.post(f"{path}/jobs", json={"kind": "mine"}, headers=engineer.headers).json()
    assert run(app, mine["id"]) == JobStatus.succeeded
    mined = client.get(f"/api/v1/jobs/{mine['id']}", headers=engineer.headers).json()["result"]
    assert mined["model_id"] == fresh and mined["strategy"] == "disagreement" and mined["chosen"] > 0


def test_a_detector_refresh_holds_the_champions_answers_on_replayed_images_and_learns_only_from_new_boxes(detector):
    """On the champion's own training images and the fixed test images: replayed images alone leave its answers as
    they were (replaying their boxes instead went on fitting them, its scores rose and it lost to the champion at
    its gate), and a few new boxes move the heads while the test figures stay within the gate."""
    import copy

    import numpy as np

    from flywheel.training.artefacts import load_model
    from flywheel.training.datasets import load_arrays
    from flywheel.training.detection_eval import coco_figures, decide_detection_promotion, image_f1
    from flywheel.training.detection_job import box_targets, upright_sizes
    from flywheel.training.detection_refresh import _detect_from, _features, fine_tune_heads
    from flywheel.training.snapshots import load_box_items
    from storage.models import DatasetSnapshot, Split

    rt = detector.app.state.runtime
    with rt.db.read_session() as session:
        best = session.get_one(ModelVersion, detector.champion_id)
        labels, items = load_box_items(rt.blobs, session.get_one(DatasetSnapshot, best.snapshot_id))
        sizes = upright_sizes(session, [i.image_id for i in items])
    train = [i for i in items if i.split == Split.train]
    tests = [i for i in items if i.split == Split.test]
    champion_network = load_model(rt.blobs, best)
    arrays = load_arrays(rt.blobs, [i.sha256 for i in train + tests], size=best.input_size)
    features = _features(champion_network, arrays)
    targets = box_targets(train + tests, sizes, labels=labels, input_size=best.input_size)
    train_f, test_f, train_t, test_t = (
        features[: len(train)],
        features[len(train) :],
        targets[: len(train)],
        targets[len(train) :],
    )
    before = _detect_from(champion_network, test_f)

    def refreshed(new: np.ndarray) -> tuple[list, list[float]]:
        network = copy.deepcopy(champion_network)
        losses = fine_tune_heads(network, train_f, train_t, new=new, num_classes=len(labels), seed=0)
        return _detect_from(network, test_f), losses

    held, losses = refreshed(np.zeros(len(train), bool))
    for a, b in zip(before, held, strict=True):
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-2)
    assert max(losses) == 0.0  # nothing moved them: no rounding noise for Adam to turn into steps

    new = np.arange(len(train)) < 6  # six images as if just labeled: their boxes are what the heads learn from
    after, losses = refreshed(new)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    decision = decide_detection_promotion(
        champion_f1=np.array([image_f1(t, d) for t, d in zip(test_t, before, strict=True)]),
        candidate_f1=np.array([image_f1(t, d) for t, d in zip(test_t, after, strict=True)]),
        champion_map50=coco_figures(test_t, before, labels=labels).map50,
        candidate_map50=coco_figures(test_t, after, labels=labels).map50,
        tolerance=0.005,
    )
    assert decision.promote and decision.candidate_map50 >= decision.champion_map50 - 0.005, decision
