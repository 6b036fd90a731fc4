"""The ``label_quality`` job: out-of-sample probabilities by K-fold cross-validation, then confident learning.

Consensus is refreshed and the training snapshot taken exactly as a training does; then each
labeled training image is predicted by a model trained on the other folds, with the project's own
architecture and preprocessing, so a label is judged by a model that never saw it. The cleanlab step
takes milliseconds; training the folds is the cost.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sqlalchemy import select

from annotation.consensus import update_project_consensus
from annotation.label_issues import FoundIssue, find_issues, store_issues
from flywheel.jobs.params import LabelQualityParams, read_params
from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.training.architectures import default_architecture, default_input_size
from flywheel.training.box_label_quality import run_box_label_quality
from flywheel.training.datasets import DEV_SHARE, dev_split, load_arrays
from flywheel.training.fit import TrainConfig, predict_proba, train
from flywheel.training.snapshots import build_snapshot, load_items
from flywheel.training.training_job import train_config
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import InvalidInput
from storage.models import Image, Project, Split, TaskType
from storage.projects import TrainingSettings, project_settings

Progress = Callable[[float, str], None]
# Detection follows the model's quality, and a small project gives few optimizer steps per epoch:
# by default each fold trains for about this many steps (F1 on the digits: 0.92 after ~220 steps,
# 0.96 after ~360), within these bounds on epochs.
CV_STEPS, MIN_EPOCHS, MAX_EPOCHS = 400, 5, 200
DEFAULT_FOLDS = 5


def default_epochs(images: int, *, folds: int, batch_size: int) -> int:
    """Epochs that give each fold about ``CV_STEPS`` optimizer steps."""
    fit = images * (folds - 1) / folds * (1 - DEV_SHARE)
    steps_per_epoch = max(1, math.ceil(fit / batch_size))
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(CV_STEPS / steps_per_epoch)))


def cv_config(training: TrainingSettings, *, architecture: str, epochs: int, threads: int) -> TrainConfig:
    """The project's training recipe, with the epochs cross-validation needs (they already set its steps) and
    random init."""
    return replace(
        train_config(training, architecture=architecture, threads=threads),
        epochs=epochs,
        min_epoch_images=0,
        pretrained_weights=None,
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
    with warnings.catch_warnings():
        # A class with fewer images than folds is simply missing from some folds.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed).split(arrays, labels))
    for fold, (rest, held) in enumerate(splits, start=1):
        fit, dev = dev_split(labels[rest], seed=config.seed + fold, min_dev=config.min_dev_images)
        result = train(
            replace(config, seed=config.seed + fold),
            train_images=arrays[rest[fit]],
            train_labels=labels[rest[fit]],
            dev_images=arrays[rest[dev]],
            dev_labels=labels[rest[dev]],
            num_classes=num_classes,
        )
        probabilities[held] = predict_proba(result.model, arrays[held])
        if progress:
            progress(0.15 + 0.8 * fold / folds, f"fold {fold} of {folds} trained")
    return probabilities


def run_label_quality(
    db: Database,
    blobs: BlobStore,
    project_id: int,
    *,
    folds: int = DEFAULT_FOLDS,
    filter_by: str = "prune_by_class",
    epochs: int | None = None,
    threads: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Rank likely-wrong labels among the snapshot's training images and store the list; returns a summary.

    The options are those of ``LabelQualityParams``, within its bounds (a job reads them through it);
    ``epochs`` None: enough for about ``CV_STEPS`` optimizer steps per fold."""
    started = time.perf_counter()
    if progress:
        progress(0.0, "refreshing consensus and taking the training snapshot")
    with db.session() as session:
        update_project_consensus(session, project_id)
        project = session.get_one(Project, project_id)
        training = project_settings(project).training
        snapshot = build_snapshot(session, blobs, project=project)
        snapshot_id = snapshot.id
        label_set, items = load_items(blobs, snapshot)
        items = [i for i in items if i.split == Split.train]
        sides = session.execute(
            select(Image.width, Image.height).where(Image.id.in_([i.image_id for i in items[:2000]]))
        )
        widths, heights = zip(*sides, strict=True) if items else ((1,), (1,))
    counts = Counter(i.label for i in items)
    classes = [label for label in label_set if label in counts]
    if len(classes) < 2 or len(items) < 2 * folds or max(counts.values()) < folds:
        raise InvalidInput(
            f"label quality needs at least {2 * folds} labeled training images of two or more labels, {folds} of "
            f"one label at least (one per fold); the training snapshot has {len(items)} of {len(classes)} "
            f"label(s), at most {max(counts.values(), default=0)} of one",
            code="too_few_labels",
        )
    architecture = training.architecture or default_architecture(
        int(statistics.median(widths)), int(statistics.median(heights))
    )
    index = {label: k for k, label in enumerate(classes)}
    labels = np.array([index[i.label] for i in items], dtype=np.int64)

    def on_read(done: int, total: int) -> None:
        if progress:
            progress(0.15 * done / total, f"read {done}/{total} images")

    arrays = load_arrays(
        blobs,
        [i.sha256 for i in items],
        size=training.input_size or default_input_size(architecture),
        on_progress=on_read,
    )
    epochs = epochs or default_epochs(len(items), folds=folds, batch_size=training.batch_size)
    config = cv_config(training, architecture=architecture, epochs=epochs, threads=threads)
    probabilities = cross_validated_probabilities(
        arrays, labels, num_classes=len(classes), folds=folds, config=config, progress=progress
    )
    issues = find_issues(labels, probabilities, filter_by=filter_by)
    with db.session() as session:
        store_issues(
            session,
            project_id=project_id,
            issues=[
                FoundIssue(
                    image_id=items[i.index].image_id,
                    given_label=classes[i.given],
                    suggested_label=classes[i.suggested],
                    score=i.score,
                )
                for i in issues
            ],
        )
    message = f"{len(issues)} likely-wrong labels among {len(items)} training images"
    if progress:
        progress(1.0, message)
    return {
        "message": message,
        "snapshot_id": snapshot_id,
        "images": len(items),
        "classes": len(classes),
        "folds": folds,
        "architecture": architecture,
        "epochs": epochs,
        "filter_by": filter_by,
        "cross_validated_accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        "issues": len(issues),
        "seconds": round(time.perf_counter() - started, 2),
    }


def label_quality_job(ctx: JobContext) -> dict[str, Any]:
    """Params: ``LabelQualityParams`` (flywheel/jobs/params.py). Detection projects: ``run_box_label_quality``."""
    try:
        params = read_params(LabelQualityParams, ctx.params)
        with ctx.db.read_session() as session:
            detection = session.get_one(Project, ctx.project_id).task_type is TaskType.detection
        if detection:
            return run_box_label_quality(
                ctx.db,
                ctx.blobs,
                ctx.project_id,
                folds=params.folds,
                epochs=params.epochs,
                score_below=params.score_below,
                threads=ctx.settings.train_threads,
                progress=ctx.progress,
            )
        return run_label_quality(
            ctx.db,
            ctx.blobs,
            ctx.project_id,
            folds=params.folds or DEFAULT_FOLDS,
            filter_by=params.filter_by,
            epochs=params.epochs,
            threads=ctx.settings.train_threads,
            progress=ctx.progress,
        )
    except (InvalidInput, ValueError) as exc:
        raise JobFailed(str(exc)) from exc
