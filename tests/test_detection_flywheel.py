"""Detectors in the flywheel: trained in the background job from a detection snapshot, evaluated with COCO's
figures (pycocotools) against a baseline, exported to ONNX checked against PyTorch, promoted by a paired test."""

from __future__ import annotations


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
    assert all(set(e) == {"image_id", *metrics["errors"]} for e in metrics["error_images"])
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
