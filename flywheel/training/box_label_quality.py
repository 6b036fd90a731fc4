"""The ``label_quality`` job for detection projects: out-of-sample detections by K-fold, then cleanlab's ObjectLab.

As for classification (``label_quality``): consensus refreshed, the training snapshot taken, and each training
image's boxes judged by a detector trained on the other folds (the project's architecture, input size and
recipe, random init), so a box is never judged by a model that learnt it. A fold costs about one training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from annotation.consensus import update_project_consensus
from annotation.label_issues import FoundIssue, store_issues
from flywheel.jobs.runner import JobFailed
from flywheel.serving.detection import Detections
from flywheel.training.box_issues import find_box_issues
from flywheel.training.datasets import load_arrays
from flywheel.training.detection_fit import BoxTargets, predict_boxes, train_detector
from flywheel.training.detection_job import box_targets, detection_recipe, upright_sizes
from flywheel.training.detectors import DETECTION_ARCHITECTURES
from flywheel.training.fit import TrainConfig
from flywheel.training.snapshots import build_snapshot, load_box_items
from flywheel.training.training_job import train_config
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import InvalidInput
from storage.models import Project, Split
from storage.projects import project_settings

Progress = Callable[[float, str], None]
DEFAULT_FOLDS = 3  # each fold is a detector's training: three keep the job near three trainings


def cross_validated_detections(
    images: np.ndarray,
    targets: list[BoxTargets],
    *,
    num_classes: int,
    folds: int,
    config: TrainConfig,
    progress: Progress | None = None,
) -> list[Detections]:
    """Each image's detections from the detector trained on the folds that do not hold it."""
    found: list[Detections | None] = [None] * len(images)
    splits = KFold(n_splits=folds, shuffle=True, random_state=config.seed).split(images)
    for fold, (rest, held) in enumerate(splits, start=1):

        def on_epoch(epoch: int, record: dict[str, float], fold: int = fold) -> None:
            if progress:
                done = (fold - 1 + epoch / config.epochs) / folds
                progress(0.15 + 0.8 * done, f"fold {fold} of {folds}: epoch {epoch}/{config.epochs}")

        result = train_detector(
            replace(config, seed=config.seed + fold),
            images=images[rest],
            targets=[targets[i] for i in rest],
            num_classes=num_classes,
            on_epoch=on_epoch,
        )
        for i, detections in zip(held, predict_boxes(result.model, images[held]), strict=True):
            found[i] = detections
    return [f for f in found if f is not None]


def run_box_label_quality(
    db: Database,
    blobs: BlobStore,
    project_id: int,
    *,
    folds: int | None = None,
    epochs: int | None = None,
    score_below: float | None = None,
    threads: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Rank the training images whose boxes look wrong and store the list; returns a summary. ``folds`` None:
    ``DEFAULT_FOLDS``; ``epochs`` None: the project's training epochs; ``score_below``: list the images scored
    below it too, not only those cleanlab flags."""
    started = time.perf_counter()
    folds = folds or DEFAULT_FOLDS
    if progress:
        progress(0.0, "refreshing consensus and taking the training snapshot")
    with db.session() as session:
        update_project_consensus(session, project_id)
        project = session.get_one(Project, project_id)
        training = project_settings(project).training
        snapshot = build_snapshot(session, blobs, project=project)
        snapshot_id = snapshot.id
        labels, items = load_box_items(blobs, snapshot)
        items = [i for i in items if i.split == Split.train]
        if len(items) < 2 * folds or not any(i.boxes for i in items):
            raise InvalidInput(
                f"box label quality needs at least {2 * folds} answered training images with some boxes "
                f"({folds} folds); the training snapshot has {len(items)}; label more images or use fewer folds",
                code="too_few_labels",
            )
        if training.architecture is not None and training.architecture not in DETECTION_ARCHITECTURES:
            raise InvalidInput(f"training.architecture {training.architecture!r} is not a detector")
        try:
            architecture, input_size = detection_recipe(session, items, training)
        except JobFailed as exc:
            raise InvalidInput(str(exc)) from exc
        sizes = upright_sizes(session, [i.image_id for i in items])

    def on_read(done: int, total: int) -> None:
        if progress:
            progress(0.15 * done / total, f"read {done}/{total} images")

    images = load_arrays(blobs, [i.sha256 for i in items], size=input_size, on_progress=on_read)
    targets = box_targets(items, sizes, labels=labels, input_size=input_size)
    config = replace(
        train_config(training, architecture=architecture, threads=threads),
        epochs=epochs or training.epochs,
        pretrained_weights=None,
    )
    found = cross_validated_detections(
        images, targets, num_classes=len(labels), folds=folds, config=config, progress=progress
    )
    if progress:
        progress(0.96, "ranking the boxes with cleanlab")
    issues = find_box_issues(
        [t.boxes for t in targets],
        [t.classes for t in targets],
        found,
        num_classes=len(labels),
        score_below=score_below,
    )
    with db.session() as session:
        stored = []
        for issue in issues:
            item = items[issue.index]
            width, height = sizes[item.image_id]
            fx, fy = width / input_size, height / input_size
            x1, y1, x2, y2 = issue.box
            box = {"x": x1 * fx, "y": y1 * fy, "w": (x2 - x1) * fx, "h": (y2 - y1) * fy}
            stored.append(
                FoundIssue(
                    image_id=item.image_id,
                    given_label="" if issue.given is None else labels[issue.given],
                    suggested_label=labels[issue.suggested],
                    score=issue.score,
                    issue_type=issue.issue_type,
                    box={k: round(v, 2) for k, v in box.items()},
                    type_scores=issue.type_scores,
                )
            )
        store_issues(session, project_id=project_id, issues=stored)
    counts = {kind: sum(i.issue_type == kind for i in issues) for kind in ("overlooked", "swap", "badloc")}
    message = (
        f"{len(issues)} images with likely-wrong boxes among {len(items)} training images "
        f"({counts['overlooked']} overlooked, {counts['swap']} swapped, {counts['badloc']} badly located)"
    )
    if progress:
        progress(1.0, message)
    return {
        "message": message,
        "task": "detection",
        "snapshot_id": snapshot_id,
        "images": len(items),
        "classes": len(labels),
        "folds": folds,
        "architecture": architecture,
        "input_size": input_size,
        "epochs": config.epochs,
        "score_below": score_below,
        "issues": len(issues),
        "flagged": sum(i.flagged for i in issues),
        "issue_types": counts,
        "seconds": round(time.perf_counter() - started, 2),
    }
