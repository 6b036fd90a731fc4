"""The two fast jobs around a champion: ``embed`` caches every image's embedding from its backbone,
and ``refresh`` refits only the head on those embeddings when labels arrive, in about a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sqlalchemy import func, select

from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.serving.heads import head_bytes, head_probabilities, read_head
from flywheel.serving.registry import champion, prune_refreshed_heads
from flywheel.training.artefacts import checkpoint_bytes, embed_and_predict, full_network, load_model
from flywheel.training.datasets import load_arrays
from flywheel.training.evaluation import BASELINE_RULE, decide_promotion, evaluate
from flywheel.training.onnx_export import ONNX_TOLERANCE, export_onnx, max_difference, onnx_metadata
from flywheel.training.snapshots import build_snapshot, load_items
from storage.blobs import BlobStore
from storage.db import Database, insert_new
from storage.models import (
    Annotation,
    Embedding,
    Image,
    ModelKind,
    ModelStatus,
    ModelVersion,
    Project,
    Split,
    utcnow,
)
from storage.projects import project_settings

EMBED_BATCH = 256
EMBED_CHUNK = 5000
ABSENT_CLASS_BIAS = -30.0  # a class with no label yet gets a probability of about e^-30


def ensure_embeddings(
    db: Database,
    blobs: BlobStore,
    backbone: ModelVersion,
    images: Sequence[tuple[int, str]],
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[int, np.ndarray]:
    """Embeddings of ``images`` (id, sha256) from ``backbone``: read from the cache, the missing ones computed
    and stored in batches."""
    vectors = cached_embeddings(db, backbone.id, [image_id for image_id, _ in images])
    missing = [(image_id, sha) for image_id, sha in images if image_id not in vectors]
    if missing:
        assert backbone.weights_sha256 is not None
        network = full_network(blobs, backbone.weights_sha256)
    for start in range(0, len(missing), EMBED_BATCH):
        batch = missing[start : start + EMBED_BATCH]
        arrays = load_arrays(blobs, [sha for _, sha in batch], size=backbone.input_size)
        embeddings, _ = embed_and_predict(network, arrays)
        rows = [
            {"model_id": backbone.id, "image_id": image_id, "vector": vector.tobytes()}
            for (image_id, _), vector in zip(batch, embeddings, strict=True)
        ]
        with db.session() as session:
            insert_new(session, Embedding, rows)
        vectors.update((image_id, vector) for (image_id, _), vector in zip(batch, embeddings, strict=True))
        if on_progress:
            on_progress(len(images) - len(missing) + start + len(batch), len(images))
    return vectors


def cached_embeddings(db: Database, model_id: int, image_ids: list[int]) -> dict[int, np.ndarray]:
    """The stored embeddings among ``image_ids`` from the backbone of ``model_id``, by image id."""
    found: dict[int, np.ndarray] = {}
    with db.read_session() as session:
        for start in range(0, len(image_ids), 900):  # under SQLite's bound-parameter limit
            rows = session.execute(
                select(Embedding.image_id, Embedding.vector).where(
                    Embedding.model_id == model_id, Embedding.image_id.in_(image_ids[start : start + 900])
                )
            )
            found.update((image_id, np.frombuffer(vector, dtype=np.float32)) for image_id, vector in rows)
    return found


def run_embedding(ctx: JobContext) -> dict[str, Any]:
    """Cache every image's embedding from the champion's backbone, in id order, in batches."""
    with ctx.db.read_session() as session:
        best = champion(session, project_id=ctx.project_id)
        if best is None:
            raise JobFailed("no champion model yet: embeddings come from the champion's backbone; train one first")
        images = [
            (image_id, sha256)
            for image_id, sha256 in session.execute(
                select(Image.id, Image.sha256).where(Image.project_id == ctx.project_id).order_by(Image.id)
            )
        ]
    for start in range(0, len(images), EMBED_CHUNK):  # a chunk's vectors at a time in memory, not the pool's

        def report(done: int, _: int, start: int = start) -> None:
            ctx.progress((start + done) / len(images), f"embedded {start + done}/{len(images)} images")

        ensure_embeddings(ctx.db, ctx.blobs, best, images[start : start + EMBED_CHUNK], on_progress=report)
    return {"model_id": best.id, "images": len(images), "message": f"{len(images)} embeddings from model {best.id}"}


def fit_head(
    embeddings: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression on standardized embeddings, folded back into one linear layer over
    the raw embeddings (so the network's own head can hold it); classes with no label get a very low bias."""
    scaler = StandardScaler().fit(embeddings)
    regression = LogisticRegression(max_iter=500, class_weight="balanced", random_state=seed)
    regression.fit(scaler.transform(embeddings), labels)
    coef, intercept = regression.coef_, regression.intercept_
    if len(regression.classes_) == 2:  # sklearn keeps one row for two classes: softmax([0, z]) = sigmoid(z)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weight = np.zeros((num_classes, embeddings.shape[1]), dtype=np.float32)
    bias = np.full(num_classes, ABSENT_CLASS_BIAS, dtype=np.float32)
    for row, cls in enumerate(regression.classes_):
        weight[cls] = coef[row] / scale
        bias[cls] = intercept[row] - float(np.sum(coef[row] * scaler.mean_ / scale))
    return weight, bias


def run_refresh(ctx: JobContext) -> dict[str, Any]:
    """Refit the champion's head on every consensus label now, and serve it as a new model version."""
    with ctx.db.session() as session:
        existing = session.scalars(select(ModelVersion).where(ModelVersion.job_id == ctx.job_id)).first()
        if existing is not None:
            return {"model_id": existing.id, "message": f"model {existing.id} was made by an earlier attempt"}
        best = champion(session, project_id=ctx.project_id)
        if best is None:
            raise JobFailed("no champion model yet: a refresh refits the champion's head; train a model first")
        project = session.get_one(Project, ctx.project_id)
        tolerance = project_settings(project).training.promotion_tolerance
        # Read before the snapshot, so a label that lands in between is never claimed as seen when it is not.
        through = session.scalar(select(func.max(Annotation.id)).where(Annotation.project_id == project.id))
        snapshot = build_snapshot(session, ctx.blobs, project=project)
    labels, items = load_items(ctx.blobs, snapshot)
    index = {label: k for k, label in enumerate(best.labels)}
    items = [i for i in items if i.label in index]
    vectors = ensure_embeddings(ctx.db, ctx.blobs, best, [(i.image_id, i.sha256) for i in items])
    train_items = [i for i in items if i.split == Split.train]
    test_items = [i for i in items if i.split == Split.test]
    train_y = np.array([index[i.label] for i in train_items])
    if len(np.unique(train_y)) < 2:
        raise JobFailed("a refresh needs labeled training images of at least two classes")
    weight, bias = fit_head(
        np.stack([vectors[i.image_id] for i in train_items]), train_y, len(best.labels), seed=best.seed
    )
    metrics: dict[str, Any] = {"train_items": len(train_items), "test_items": len(test_items)}
    decision: dict[str, Any] = {"promote": True, "reason": "no labeled test images to compare it with the champion"}
    if test_items:
        test_y = np.array([index[i.label] for i in test_items])
        test_vectors = np.stack([vectors[i.image_id] for i in test_items])
        predicted = head_probabilities(test_vectors, weight, bias).argmax(1)
        report = evaluate(test_y, predicted, labels=best.labels)
        metrics |= {
            "test_accuracy": report.accuracy,
            "baseline_accuracy": report.baseline_accuracy,
            "baseline": BASELINE_RULE,
            "baseline_label": report.baseline_label,
            "per_class": report.per_class,
            "confusion_matrix": report.confusion,
        }
        decision = _against_champion(ctx, best, test_vectors, test_y, predicted == test_y, tolerance=tolerance)
    serves = bool(decision["promote"])
    with ctx.db.session() as session:
        model = ModelVersion(
            project_id=ctx.project_id,
            job_id=ctx.job_id,
            snapshot_id=snapshot.id,
            parent_id=best.id,
            kind=ModelKind.refresh,
            # A head that fails the champion's bar is kept for the record but never serves.
            status=ModelStatus.candidate if serves else ModelStatus.retired,
            architecture=best.architecture,
            input_size=best.input_size,
            labels=list(best.labels),
            hyperparameters={"head": "logistic regression on standardized embeddings", "class_weight": "balanced"},
            seed=best.seed,
            metrics=metrics,
            decision=decision,
            labels_through=through,
            finished_at=utcnow(),
        )
        model.head_sha256 = ctx.blobs.put_bytes(head_bytes(weight, bias))
        session.add(model)
        session.flush()
        pruned = prune_refreshed_heads(
            session,
            ctx.blobs,
            project_id=ctx.project_id,
            keep=ctx.settings.refresh_heads_kept,
            grace_seconds=ctx.settings.refresh_prune_grace_seconds,
        )
        accuracy = metrics.get("test_accuracy")
        shown = f"{accuracy:.3f}" if accuracy is not None else "n/a"
        outcome = "serving" if serves else f"not serving, the champion does: {decision['reason']}"
        return {
            "model_id": model.id,
            "labels": len(items),
            "test_accuracy": accuracy,
            "serving": serves,
            "pruned": pruned,
            "message": f"refreshed head of model {best.id} on {len(train_items)} labels "
            f"(test accuracy {shown}): {outcome}",
        }


def _against_champion(
    ctx: JobContext,
    best: ModelVersion,
    test_vectors: np.ndarray,
    test_y: np.ndarray,
    head_correct: np.ndarray,
    *,
    tolerance: float,
) -> dict[str, Any]:
    """The refreshed head is held to a new model's bar: on the same test items, by the same rule, against the
    champion's own head (cheap: both read the cached embeddings)."""
    assert best.head_sha256 is not None
    champion_correct = head_probabilities(test_vectors, *read_head(ctx.blobs, best.head_sha256)).argmax(1) == test_y
    result = decide_promotion(champion_correct, head_correct, tolerance=tolerance)
    return {**asdict(result), "compared_with": "champion", "champion_id": best.id}


def run_export(ctx: JobContext) -> dict[str, Any]:
    """Make a refreshed model's stand-alone files, the checked ONNX file and a full checkpoint, when somebody
    first asks to download them (a head serves without them: the champion's ONNX backbone and its own head)."""
    with ctx.db.read_session() as session:
        model = session.get_one(ModelVersion, int(ctx.params["model_id"]))
        parent = session.get(ModelVersion, model.parent_id) if model.parent_id else None
    if model.onnx_sha256 is not None:
        return {"model_id": model.id, "message": f"model {model.id} has its ONNX file already"}
    if model.files_pruned_at is not None:
        raise JobFailed(f"model {model.id} is an old refreshed head whose files were pruned; export a newer one")
    network = load_model(ctx.blobs, model, parent)
    onnx_bytes = export_onnx(network, model.input_size, metadata=onnx_metadata(model))
    difference = max_difference(network, onnx_bytes, model.input_size)
    if difference > ONNX_TOLERANCE:
        raise JobFailed(f"the ONNX export differs from PyTorch by {difference:.2e} (> {ONNX_TOLERANCE}); not stored")
    sha = ctx.blobs.put_bytes(onnx_bytes)
    weights_sha = ctx.blobs.put_bytes(checkpoint_bytes(network.state_dict(), model=model))
    with ctx.db.session() as session:
        stored = session.get_one(ModelVersion, model.id)
        stored.onnx_sha256, stored.weights_sha256 = sha, weights_sha
        stored.metrics = {**(stored.metrics or {}), "onnx_max_difference": difference}
    return {"model_id": model.id, "onnx_sha256": sha, "message": f"ONNX of model {model.id} stored"}
