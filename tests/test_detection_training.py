"""Detectors in the flywheel: trained in the background job from a detection snapshot, evaluated with COCO's
figures (pycocotools) against a baseline, exported to ONNX checked against PyTorch, promoted by a paired test."""

from __future__ import annotations

import pytest


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
