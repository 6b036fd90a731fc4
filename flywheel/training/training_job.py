"""The ``train`` job: snapshot, train, evaluate against the baseline and the champion, store, decide.

A retried job (its worker died) finds the model row it started and trains it again from the same
snapshot, so a crash never leaves two models for one training.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from annotation.consensus import update_project_consensus
from flywheel.jobs.params import TrainParams, read_params
from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.policy import make_champion
from flywheel.serving.heads import head_bytes
from flywheel.serving.registry import champion
from flywheel.training.architectures import ARCHITECTURES, default_architecture, default_input_size
from flywheel.training.artefacts import checkpoint_bytes, head_arrays, load_model
from flywheel.training.datasets import dev_split, load_arrays
from flywheel.training.detection_job import check_detection_trainable, detection_recipe, train_detection
from flywheel.training.detectors import DETECTION_ARCHITECTURES
from flywheel.training.evaluation import BASELINE_RULE, Evaluation, decide_promotion, evaluate
from flywheel.training.fit import TrainConfig, predict_proba, train
from flywheel.training.onnx_export import ONNX_TOLERANCE, export_onnx, max_difference, onnx_metadata
from flywheel.training.snapshots import Item, build_snapshot, load_box_items, load_items
from storage.models import (
    Annotation,
    DatasetSnapshot,
    Image,
    ModelKind,
    ModelStatus,
    ModelVersion,
    Project,
    Split,
    TaskType,
    utcnow,
)
from storage.projects import TrainingSettings, project_settings


def run_training(ctx: JobContext) -> dict[str, Any]:
    started = _start(ctx)
    if isinstance(started, Skipped):
        return {"skipped": True, "model_id": started.model_id, "message": f"skipped: {started.reason}"}
    model_id = started
    try:
        return _train(ctx, model_id)
    except BaseException:
        with ctx.db.session() as session:
            model = session.get_one(ModelVersion, model_id)
            if model.status == ModelStatus.training:
                model.status, model.finished_at = ModelStatus.failed, utcnow()
        raise


def _train(ctx: JobContext, model_id: int) -> dict[str, Any]:
    with ctx.db.read_session() as session:
        model = session.get_one(ModelVersion, model_id)
        if model.status != ModelStatus.training:  # finished by an earlier attempt that died just after
            return _summary(model)
        snapshot = session.get_one(DatasetSnapshot, model.snapshot_id)
        current = champion(session, project_id=ctx.project_id)
        detection = session.get_one(Project, ctx.project_id).task_type is TaskType.detection
    if detection:
        made = train_detection(
            ctx, model_id, pretrained_path=_pretrained_path(ctx, model.hyperparameters.get("pretrained_weights"))
        )
        return _store(ctx, model_id, current, made["metrics"], made["decision"], made["weights"], made["onnx"], None)
    labels, items = load_items(ctx.blobs, snapshot)
    config = TrainConfig(**model.hyperparameters)
    train_items = [i for i in items if i.split == Split.train]
    test_items = [i for i in items if i.split == Split.test]
    index = {label: k for k, label in enumerate(labels)}

    ctx.progress(0.01, f"reading {len(items)} images")
    images = load_arrays(
        ctx.blobs,
        [i.sha256 for i in train_items + test_items],
        size=model.input_size,
        on_progress=lambda done, total: ctx.progress(0.15 * done / total, f"read {done}/{total} images"),
    )
    train_x, test_x = images[: len(train_items)], images[len(train_items) :]
    train_y = np.array([index[i.label] for i in train_items])
    test_y = np.array([index[i.label] for i in test_items])
    fit, dev = dev_split(train_y, seed=config.seed, min_dev=config.min_dev_images)

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        ctx.progress(
            0.15 + 0.7 * epoch / config.epochs,
            f"epoch {epoch}/{config.epochs}: loss {record['loss']:.3f}, dev accuracy {record['dev_accuracy']:.3f}",
        )

    result = train(
        config,
        train_images=train_x[fit],
        train_labels=train_y[fit],
        dev_images=train_x[dev],
        dev_labels=train_y[dev],
        num_classes=len(labels),
        on_epoch=on_epoch,
        pretrained_path=_pretrained_path(ctx, config.pretrained_weights),
    )
    ctx.progress(0.86, "evaluating on the test split")
    predicted = predict_proba(result.model, test_x).argmax(1)
    report = evaluate(test_y, predicted, labels=labels)
    decision = _decide(ctx, current, test_items, test_y == predicted, report, test_y, labels)

    ctx.progress(0.92, "exporting ONNX")
    onnx_bytes = export_onnx(result.model, model.input_size, metadata=onnx_metadata(model))
    difference = max_difference(result.model, onnx_bytes, model.input_size)
    if difference > ONNX_TOLERANCE:
        raise JobFailed(f"the ONNX export differs from PyTorch by {difference:.2e} (> {ONNX_TOLERANCE}); not stored")
    weights_sha = ctx.blobs.put_bytes(checkpoint_bytes(result.model.state_dict(), model=model))
    head_sha = ctx.blobs.put_bytes(head_bytes(*head_arrays(result.model)))
    onnx_sha = ctx.blobs.put_bytes(onnx_bytes)

    metrics = {
        "test_accuracy": report.accuracy,
        "baseline_accuracy": report.baseline_accuracy,
        "baseline": BASELINE_RULE,
        "baseline_label": report.baseline_label,
        "per_class": report.per_class,
        "confusion_matrix": report.confusion,
        "wrong_test_images": [
            {"image_id": test_items[k].image_id, "label": test_items[k].label, "predicted": labels[predicted[k]]}
            for k in report.wrong
        ],
        "test_items": len(test_items),
        "train_items": len(fit),
        "dev_items": len(dev),
        "dev_accuracy": result.dev_accuracy,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "onnx_max_difference": difference,
    }
    return _store(ctx, model_id, current, metrics, decision, weights_sha, onnx_sha, head_sha)


def _store(
    ctx: JobContext,
    model_id: int,
    current: ModelVersion | None,
    metrics: dict[str, Any],
    decision: dict[str, Any],
    weights_sha: str,
    onnx_sha: str,
    head_sha: str | None,
) -> dict[str, Any]:
    """Store a finished training's figures and files, and promote it when its decision says so and the champion it
    was compared with still is one."""
    with ctx.db.session() as session:
        model = session.get_one(ModelVersion, model_id)
        model.metrics, model.decision = metrics, decision
        model.weights_sha256, model.onnx_sha256, model.head_sha256 = weights_sha, onnx_sha, head_sha
        model.finished_at = utcnow()
        model.status = ModelStatus.candidate
        still_current = champion(session, project_id=ctx.project_id)
        compared_with = current.id if current else None
        if decision["promote"] and (still_current.id if still_current else None) == compared_with:
            make_champion(session, model=model, by_user=None, reason=decision["reason"], transport=ctx.transport)
        elif decision["promote"]:
            model.decision = {**decision, "promote": False, "reason": "the champion changed during training"}
        session.flush()
        return _summary(model)


@dataclass(frozen=True)
class Skipped:
    """A training that would repeat one already made: the same labels, the same recipe."""

    model_id: int
    reason: str


def _start(ctx: JobContext) -> int | Skipped:
    """Snapshot the labels and create this job's model row (or find it, on a retry); ``Skipped`` when the
    champion or the newest finished training was made from this very snapshot with this very recipe (it
    would come out the same, weights and all)."""
    with ctx.db.session() as session:
        existing = session.scalars(select(ModelVersion).where(ModelVersion.job_id == ctx.job_id)).first()
        if existing is not None:
            if existing.status == ModelStatus.failed:  # an earlier attempt was interrupted: train it again
                existing.status = ModelStatus.training
            return existing.id
        project = session.get_one(Project, ctx.project_id)
        settings = project_settings(project).training
        update_project_consensus(session, project.id)  # Dawid-Skene over every label (or box classes), then freeze
        # Read before the snapshot, so a label that lands in between is never claimed as seen when it is not.
        through = session.scalar(select(func.max(Annotation.id)).where(Annotation.project_id == project.id))
        snapshot = build_snapshot(session, ctx.blobs, project=project)
        if project.task_type is TaskType.detection:
            _, box_items = load_box_items(ctx.blobs, snapshot)
            _check_architecture(settings.architecture, DETECTION_ARCHITECTURES, "a detection")
            check_detection_trainable(box_items, settings)
            architecture, input_size = detection_recipe(session, box_items, settings)
        else:
            _, items = load_items(ctx.blobs, snapshot)
            _check_architecture(settings.architecture, ARCHITECTURES, "a classification")
            _check_trainable(items, settings)
            architecture = settings.architecture or _default_architecture(session, items)
            input_size = settings.input_size or default_input_size(architecture)
        current = champion(session, project_id=project.id)
        config = train_config(settings, architecture=architecture, threads=ctx.settings.train_threads)
        same = _same_training(session, project.id, current, snapshot, config, input_size)
        if same is not None and not read_params(TrainParams, ctx.params).force:
            return Skipped(
                same.id,
                f"model {same.id} was trained on the same {snapshot.item_count} labels (snapshot {snapshot.id}) with "
                "the same settings; label more images, change the training settings, or ask again with "
                '{"force": true}',
            )
        model = ModelVersion(
            project_id=project.id,
            job_id=ctx.job_id,
            snapshot_id=snapshot.id,
            parent_id=current.id if current else None,
            kind=ModelKind.full,
            status=ModelStatus.training,
            architecture=architecture,
            input_size=input_size,
            labels=list(project.labels),
            hyperparameters=config.as_dict(),
            seed=config.seed,
            labels_through=through,
        )
        session.add(model)
        session.flush()
        return model.id


def _same_training(
    session: Session,
    project_id: int,
    current: ModelVersion | None,
    snapshot: DatasetSnapshot,
    config: TrainConfig,
    input_size: int,
) -> ModelVersion | None:
    """The champion or the newest finished training, if it was made from ``snapshot`` with this recipe."""
    newest = session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.project_id == project_id,
            ModelVersion.kind == ModelKind.full,
            ModelVersion.status.in_([ModelStatus.champion, ModelStatus.candidate, ModelStatus.retired]),
        )
        .order_by(ModelVersion.id.desc())
        .limit(1)
    ).first()
    recipe = {**config.as_dict(), "threads": None}
    for model in (current, newest):
        if (
            model is not None
            and model.snapshot_id == snapshot.id
            and model.input_size == input_size
            and {**model.hyperparameters, "threads": None} == recipe
        ):
            return model
    return None


def train_config(settings: TrainingSettings, *, architecture: str, threads: int) -> TrainConfig:
    """The project's training recipe as the training core's config."""
    augment = settings.augmentation
    return TrainConfig(
        architecture=architecture,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        patience=settings.patience,
        min_dev_images=settings.min_dev_images,
        average_epochs=settings.average_epochs,
        min_epoch_images=settings.min_epoch_images,
        threads=threads,
        augment=augment.enabled,
        hflip=augment.hflip,
        rotate_degrees=augment.rotate_degrees,
        scale=augment.scale,
        translate=augment.translate,
        brightness_contrast=augment.brightness_contrast,
        pretrained_weights=settings.pretrained_weights,
    )


def _check_architecture(name: str | None, known: tuple[str, ...], kind: str) -> None:
    if name is not None and name not in known:
        raise JobFailed(
            f"training.architecture {name!r} does not fit {kind} project; use one of {', '.join(known)}, or null "
            "for the default"
        )


def _check_trainable(items: list[Item], settings: TrainingSettings) -> None:
    train_items = [i for i in items if i.split == Split.train]
    classes = {i.label for i in train_items}
    if len(train_items) < settings.min_labels:
        raise JobFailed(
            f"too few labels to train: {len(train_items)} labeled training images, at least {settings.min_labels} "
            "needed; label more images or lower the project's training.min_labels"
        )
    if len(classes) < 2:
        raise JobFailed(
            f"training needs labeled images of at least two classes; the training split has only "
            f"{', '.join(sorted(classes)) or 'none'}"
        )
    if not any(i.split == Split.test for i in items):
        raise JobFailed("no labeled image in the test split yet (about 1 in 5 images is there); label a few more")


def _default_architecture(session: Any, items: list[Item]) -> str:
    ids = [i.image_id for i in items[:2000]]
    sides = session.execute(select(Image.width, Image.height).where(Image.id.in_(ids))).all()
    width = int(statistics.median(w for w, _ in sides))
    height = int(statistics.median(h for _, h in sides))
    return default_architecture(width, height)


def _pretrained_path(ctx: JobContext, name: str | None) -> Any:
    if name is None:
        return None
    folder = ctx.settings.pretrained_dir
    if folder is None:
        raise JobFailed(f"the project names pretrained weights {name!r} but LABELWHEEL_PRETRAINED_DIR is not set")
    path = folder / name
    if not path.is_file():
        raise JobFailed(f"pretrained weights {name!r} not found in {folder}; copy the file there first")
    return path


def _decide(
    ctx: JobContext,
    current: ModelVersion | None,
    test_items: list[Item],
    candidate_correct: np.ndarray,
    report: Evaluation,
    test_y: np.ndarray,
    labels: list[str],
) -> dict[str, Any]:
    """Paired comparison on the same test items: with the champion, ``decide_promotion``'s rule (not below it by
    more than the project's tolerance, not significantly worse); with no champion yet, the candidate must beat
    the majority-class baseline."""
    accuracy, baseline_accuracy = float(candidate_correct.mean()), report.baseline_accuracy
    if current is None:
        promote_it = accuracy > baseline_accuracy
        verb = "beats" if promote_it else "does not beat"
        return {
            "promote": promote_it,
            "compared_with": "baseline",
            "candidate_accuracy": accuracy,
            "baseline_accuracy": baseline_accuracy,
            "reason": f"first model: {accuracy:.3f} test accuracy {verb} the baseline {baseline_accuracy:.3f} "
            f"(always {report.baseline_label!r}, the test split's most frequent class)",
        }
    ctx.progress(0.88, f"evaluating champion {current.id} on the same test items")
    with ctx.db.read_session() as session:
        parent = session.get(ModelVersion, current.parent_id) if current.kind == ModelKind.refresh else None
        tolerance = project_settings(session.get_one(Project, ctx.project_id)).training.promotion_tolerance
    network = load_model(ctx.blobs, current, parent)
    arrays = load_arrays(ctx.blobs, [i.sha256 for i in test_items], size=current.input_size)
    champion_predicted = [current.labels[k] for k in predict_proba(network, arrays).argmax(1)]
    champion_correct = np.array([p == labels[y] for p, y in zip(champion_predicted, test_y, strict=True)])
    result = decide_promotion(champion_correct, candidate_correct, tolerance=tolerance)
    return {
        **asdict(result),
        "compared_with": "champion",
        "champion_id": current.id,
        "baseline_accuracy": baseline_accuracy,
    }


def _summary(model: ModelVersion) -> dict[str, Any]:
    promoted = model.status == ModelStatus.champion
    metrics = model.metrics or {}
    if metrics.get("task") == "detection":
        map50, figure = metrics["test_map50"], metrics["test_map"]
        return {
            "model_id": model.id,
            "promoted": promoted,
            "test_map50": map50,
            "test_map": figure,
            "message": f"model {model.id}: test mAP@.5 {map50:.3f}, mAP@[.5:.95] {figure:.3f}, "
            f"{'champion' if promoted else 'not promoted'}",
        }
    accuracy = metrics.get("test_accuracy")
    return {
        "model_id": model.id,
        "promoted": promoted,
        "test_accuracy": accuracy,
        "message": f"model {model.id}: test accuracy {accuracy:.3f}, {'champion' if promoted else 'not promoted'}",
    }
