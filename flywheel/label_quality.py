"""The ``label_quality`` job: out-of-sample probabilities by K-fold cross-validation, then confident learning.

Each labeled training image is predicted by a model trained on the other folds, with the same
training code and preprocessing as the project's real models, so a label the model disagrees with
is judged by a model that never saw it. The cleanlab step takes milliseconds; the folds' training
is the cost (about a minute per fold of the digits on one CPU thread).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sklearn.model_selection import StratifiedKFold
from sqlalchemy import select

from annotation.label_issues import FoundIssue, find_issues, store_issues
from flywheel.architectures import default_architecture, default_input_size
from flywheel.preprocess import to_array
from flywheel.training import TrainConfig, predict_proba, train
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import InvalidInput
from storage.models import Image, Project, Split

Progress = Callable[[float, str], None]
DEV_SHARE = 0.1  # of each fold's training part, for early stopping
# Fewer epochs than a full training: five models are trained, and detection needs a good model, not the best.
CV_CONFIG = TrainConfig(epochs=12, patience=4)


@dataclass(frozen=True)
class Labeled:
    image_ids: np.ndarray  # (N,)
    arrays: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) index into classes
    classes: list[str]  # the labels present, in the project's order
    architecture: str


def load_labeled_training_images(db: Database, blobs: BlobStore, *, project_id: int) -> Labeled:
    """Training-split images with a consensus label, decoded with the models' own preprocessing."""
    with db.read_session() as session:
        project = session.get_one(Project, project_id)
        rows = session.execute(
            select(Image.id, Image.sha256, Image.width, Image.height, Image.consensus_label)
            .where(Image.project_id == project_id, Image.split == Split.train, Image.consensus_label.is_not(None))
            .order_by(Image.id)
        ).all()
        label_set = list(project.labels)
    present = {r.consensus_label for r in rows}
    classes = [label for label in label_set if label in present]
    index = {label: k for k, label in enumerate(classes)}
    widest, tallest = max((r.width for r in rows), default=1), max((r.height for r in rows), default=1)
    architecture = default_architecture(widest, tallest)
    size = default_input_size(architecture)
    arrays = []
    for row in rows:
        with blobs.open(row.sha256) as stream, PILImage.open(stream) as picture:
            arrays.append(to_array(picture, size))
    return Labeled(
        image_ids=np.array([r.id for r in rows], dtype=np.int64),
        arrays=np.stack(arrays) if arrays else np.zeros((0, size, size, 3), dtype=np.uint8),
        labels=np.array([index[r.consensus_label] for r in rows], dtype=np.int64),
        classes=classes,
        architecture=architecture,
    )


def cross_validated_probabilities(
    arrays: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    folds: int,
    config: TrainConfig,
    progress: Progress | None = None,
) -> np.ndarray:
    """(N, K) probabilities, each row from the model trained on the folds that do not hold that image."""
    probabilities = np.zeros((len(labels), num_classes), dtype=np.float64)
    rng = np.random.default_rng(config.seed)
    with warnings.catch_warnings():
        # A class with fewer images than folds is simply missing from some folds.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed).split(arrays, labels))
    for fold, (rest, held) in enumerate(splits, start=1):
        rest = rng.permutation(rest)
        dev_count = max(1, int(len(rest) * DEV_SHARE))
        dev, fit = rest[:dev_count], rest[dev_count:]
        result = train(
            replace(config, seed=config.seed + fold),
            train_images=arrays[fit],
            train_labels=labels[fit],
            dev_images=arrays[dev],
            dev_labels=labels[dev],
            num_classes=num_classes,
        )
        probabilities[held] = predict_proba(result.model, arrays[held])
        if progress:
            progress(0.1 + 0.85 * fold / folds, f"fold {fold} of {folds} trained")
    return probabilities


def run_label_quality(
    db: Database,
    blobs: BlobStore,
    project_id: int,
    *,
    folds: int = 5,
    filter_by: str = "prune_by_class",
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Find likely-wrong labels among the training images and store the ranked list; returns a summary."""
    started = time.perf_counter()
    if folds < 2:
        raise InvalidInput("label quality needs at least 2 folds", code="invalid_folds")
    if progress:
        progress(0.0, "loading labeled training images")
    data = load_labeled_training_images(db, blobs, project_id=project_id)
    if len(data.classes) < 2 or len(data.labels) < 2 * folds:
        raise InvalidInput(
            f"label quality needs at least {2 * folds} labeled training images of two or more labels; "
            f"the project has {len(data.labels)} of {len(data.classes)} label(s)",
            code="too_few_labels",
        )
    config = replace(config or CV_CONFIG, architecture=data.architecture)
    if progress:
        progress(0.1, f"cross-validating on {len(data.labels)} images, {folds} folds")
    probabilities = cross_validated_probabilities(
        data.arrays, data.labels, num_classes=len(data.classes), folds=folds, config=config, progress=progress
    )
    issues = find_issues(data.labels, probabilities, filter_by=filter_by)
    with db.session() as session:
        store_issues(
            session,
            project_id=project_id,
            issues=[
                FoundIssue(
                    image_id=int(data.image_ids[i.index]),
                    given_label=data.classes[i.given],
                    suggested_label=data.classes[i.suggested],
                    score=i.score,
                )
                for i in issues
            ],
        )
    if progress:
        progress(1.0, f"{len(issues)} likely-wrong labels found")
    return {
        "images": len(data.labels),
        "classes": len(data.classes),
        "folds": folds,
        "architecture": data.architecture,
        "filter_by": filter_by,
        "cross_validated_accuracy": float((probabilities.argmax(axis=1) == data.labels).mean()),
        "issues": len(issues),
        "seconds": round(time.perf_counter() - started, 2),
    }
