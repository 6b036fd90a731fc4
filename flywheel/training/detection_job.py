"""The ``train`` job's body for detection projects: the snapshot's boxes, a detector trained, evaluated with COCO's
figures against the baseline and the champion on the same test images, exported to ONNX, stored and decided.

``training_job.run_training`` owns the rest (the snapshot, the model row, retries, skipping a repeat, promotion);
only what differs for boxes is here.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.serving.detection import Detections, scored_boxes
from flywheel.serving.registry import champion
from flywheel.training.artefacts import checkpoint_bytes, load_model
from flywheel.training.datasets import load_arrays
from flywheel.training.detection_eval import (
    BASELINE_RULE,
    OPERATING_SCORE,
    baseline_detections,
    coco_figures,
    decide_detection_promotion,
    error_analysis,
    image_f1,
)
from flywheel.training.detection_export import (
    compare_with_torch,
    detector_metadata,
    export_detector,
    export_is_faithful,
)
from flywheel.training.detection_fit import BoxTargets, predict_boxes, train_detector
from flywheel.training.detectors import (
    SSDLITE,
    SSDLITE_SIZE,
    default_detection_architecture,
    default_detection_input_size,
)
from flywheel.training.fit import TrainConfig
from flywheel.training.snapshots import BoxItem, load_box_items
from storage.models import DatasetSnapshot, Image, ModelVersion, Project, Split
from storage.projects import TrainingSettings, project_settings

EXPORT_CHECK_IMAGES = 16


def check_detection_trainable(items: list[BoxItem], settings: TrainingSettings) -> None:
    train_items = [i for i in items if i.split == Split.train]
    if len(train_items) < settings.min_labels:
        raise JobFailed(
            f"too few answered images to train a detector: {len(train_items)} in the training split, at least "
            f"{settings.min_labels} needed; label more images or lower the project's training.min_labels"
        )
    if not any(i.boxes for i in train_items):
        raise JobFailed("no box in the training split yet: a detector needs objects to learn from; draw some boxes")
    if not any(i.split == Split.test for i in items):
        raise JobFailed("no answered image in the test split yet (about 1 in 5 images is there); label a few more")


def detection_recipe(session: Session, items: list[BoxItem], settings: TrainingSettings) -> tuple[str, int]:
    """The architecture and input size: the project's settings, else chosen by the median image's longer side."""
    sizes = upright_sizes(session, [i.image_id for i in items[:2000]])
    side = int(statistics.median(max(w, h) for w, h in sizes.values()))
    architecture = settings.architecture or default_detection_architecture(side, side)
    input_size = settings.input_size or default_detection_input_size(architecture, side)
    if architecture == SSDLITE and input_size != SSDLITE_SIZE:
        # It resizes to 320 inside; from another size its boxes come back differently in ONNX than in PyTorch.
        raise JobFailed(f"{SSDLITE} takes {SSDLITE_SIZE} px inputs; set training.input_size to null or {SSDLITE_SIZE}")
    return architecture, input_size


def upright_sizes(session: Session, image_ids: list[int]) -> dict[int, tuple[int, int]]:
    images = session.scalars(select(Image).where(Image.id.in_(image_ids)))
    return {image.id: image.upright_size for image in images}


def box_targets(
    items: list[BoxItem], sizes: dict[int, tuple[int, int]], *, labels: list[str], input_size: int
) -> list[BoxTargets]:
    """Each item's boxes in pixels of the square model input (the upright image resized to it)."""
    index = {label: k for k, label in enumerate(labels)}
    out = []
    for item in items:
        width, height = sizes[item.image_id]
        fx, fy = input_size / width, input_size / height
        corners = [[b["x"] * fx, b["y"] * fy, (b["x"] + b["w"]) * fx, (b["y"] + b["h"]) * fy] for b in item.boxes]
        out.append(
            BoxTargets(
                np.array(corners, dtype=np.float32).reshape(-1, 4),
                np.array([index[b["label"]] for b in item.boxes], dtype=np.int64),
            )
        )
    return out


ERROR_BOXES_KEPT = 100  # error images whose boxes the card keeps (worst first): the console's gallery draws them


def with_boxes(
    error_images: list[dict[str, Any]],
    items: list[BoxItem],
    found: list[Detections],
    sizes: dict[int, tuple[int, int]],
    *,
    labels: list[str],
    input_size: int,
) -> list[dict[str, Any]]:
    """The worst error images with what the gallery draws, in pixels of the upright image: the consensus boxes the
    model was scored against (``truth``, frozen in the snapshot) and its boxes at the operating score
    (``predicted``)."""
    by_image = {item.image_id: (item, detections) for item, detections in zip(items, found, strict=True)}
    out = []
    for rank, entry in enumerate(error_images):
        if rank >= ERROR_BOXES_KEPT:
            out.append(entry)
            continue
        item, detections = by_image[entry["image_id"]]
        width, height = sizes[item.image_id]
        predicted = scored_boxes(detections, labels=labels, width=width, height=height, input_size=input_size)
        out.append({**entry, "truth": list(item.boxes), "predicted": [asdict(box) for box in predicted]})
    return out


def train_detection(ctx: JobContext, model_id: int, *, pretrained_path: Any) -> dict[str, Any]:
    """Train, evaluate, export and store the detector of model row ``model_id``; returns what the model row gets
    (``metrics``, ``decision``, file hashes) for ``training_job`` to store and act on."""
    with ctx.db.read_session() as session:
        model = session.get_one(ModelVersion, model_id)
        snapshot = session.get_one(DatasetSnapshot, model.snapshot_id)
        current = champion(session, project_id=ctx.project_id)
        labels, items = load_box_items(ctx.blobs, snapshot)
        sizes = upright_sizes(session, [i.image_id for i in items])
        tolerance = project_settings(session.get_one(Project, ctx.project_id)).training.promotion_tolerance
        input_size = model.input_size
    config = TrainConfig(**model.hyperparameters)
    train_items = [i for i in items if i.split == Split.train]
    test_items = [i for i in items if i.split == Split.test]

    ctx.progress(0.01, f"reading {len(items)} images")
    images = load_arrays(
        ctx.blobs,
        [i.sha256 for i in train_items + test_items],
        size=input_size,
        on_progress=lambda done, total: ctx.progress(0.1 * done / total, f"read {done}/{total} images"),
    )
    train_x, test_x = images[: len(train_items)], images[len(train_items) :]
    train_t = box_targets(train_items, sizes, labels=labels, input_size=input_size)
    test_t = box_targets(test_items, sizes, labels=labels, input_size=input_size)

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        ctx.progress(0.1 + 0.75 * epoch / config.epochs, f"epoch {epoch}/{config.epochs}: loss {record['loss']:.3f}")

    result = train_detector(
        config,
        images=train_x,
        targets=train_t,
        num_classes=len(labels),
        on_epoch=on_epoch,
        pretrained_path=pretrained_path,
    )
    ctx.progress(0.86, "evaluating on the test split")
    found = predict_boxes(result.model, test_x)
    figures = coco_figures(test_t, found, labels=labels)
    baseline = coco_figures(test_t, baseline_detections(train_t, len(test_t), num_classes=len(labels)), labels=labels)
    f1 = np.array([image_f1(t, d) for t, d in zip(test_t, found, strict=True)])
    totals, error_images = error_analysis(test_t, found, [i.image_id for i in test_items])
    error_images = with_boxes(error_images, test_items, found, sizes, labels=labels, input_size=input_size)
    test_shas = [i.sha256 for i in test_items]
    decision = _decide(ctx, current, test_x, test_shas, test_t, f1, figures.map50, baseline.map50, tolerance)

    ctx.progress(0.92, "exporting ONNX")
    with ctx.db.read_session() as session:
        metadata = detector_metadata(session.get_one(ModelVersion, model_id), result.model)
    onnx_bytes = export_detector(result.model, input_size, metadata=metadata)
    check = compare_with_torch(result.model, onnx_bytes, test_x[:EXPORT_CHECK_IMAGES])
    if not export_is_faithful(check):
        raise JobFailed(f"the ONNX export differs from PyTorch ({check}); not stored")
    with ctx.db.read_session() as session:
        weights = checkpoint_bytes(result.model.state_dict(), model=session.get_one(ModelVersion, model_id))
    metrics = {
        "task": "detection",
        "test_map": figures.map,
        "test_map50": figures.map50,
        "test_map75": figures.map75,
        "per_class": figures.per_class,
        "baseline": BASELINE_RULE,
        "baseline_map": baseline.map,
        "baseline_map50": baseline.map50,
        "operating_score": OPERATING_SCORE,
        "mean_image_f1": float(f1.mean()),
        "errors": totals,
        "error_images": error_images,
        "test_items": len(test_items),
        "train_items": len(train_items),
        "history": result.history,
        "onnx_check": check,
    }
    return {
        "metrics": metrics,
        "decision": decision,
        "weights": ctx.blobs.put_bytes(weights),
        "onnx": ctx.blobs.put_bytes(onnx_bytes),
    }


def _decide(
    ctx: JobContext,
    current: ModelVersion | None,
    test_x: np.ndarray,
    test_shas: list[str],
    test_t: list[BoxTargets],
    candidate_f1: np.ndarray,
    candidate_map50: float,
    baseline_map50: float,
    tolerance: float,
) -> dict[str, Any]:
    """With no champion the first detector must beat the baseline's mAP@.5; then the paired test against the
    champion on the same test images (``decide_detection_promotion``)."""
    if current is None:
        promote_it = candidate_map50 > baseline_map50
        verb = "beats" if promote_it else "does not beat"
        return {
            "promote": promote_it,
            "compared_with": "baseline",
            "candidate_map50": candidate_map50,
            "baseline_map50": baseline_map50,
            "reason": f"first model: mAP@.5 {candidate_map50:.3f} on the test split {verb} the baseline's "
            f"{baseline_map50:.3f} ({BASELINE_RULE})",
        }
    ctx.progress(0.88, f"evaluating champion {current.id} on the same test images")
    network = load_model(ctx.blobs, current)
    input_size = test_x.shape[1]
    arrays = test_x if current.input_size == input_size else load_arrays(ctx.blobs, test_shas, size=current.input_size)
    scale = input_size / current.input_size
    theirs = [
        Detections(d.boxes * scale, d.scores, d.classes)
        for d in predict_boxes(network, arrays)  # in the candidate's frame
    ]
    champion_f1 = np.array([image_f1(t, d) for t, d in zip(test_t, theirs, strict=True)])
    champion_map50 = coco_figures(test_t, theirs, labels=list(current.labels)).map50
    result = decide_detection_promotion(
        champion_f1=champion_f1,
        candidate_f1=candidate_f1,
        champion_map50=champion_map50,
        candidate_map50=candidate_map50,
        tolerance=tolerance,
    )
    return {**asdict(result), "compared_with": "champion", "champion_id": current.id, "baseline_map50": baseline_map50}
