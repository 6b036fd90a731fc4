"""The ``refresh`` job of a detection project: the champion detector's heads fine-tuned, within seconds, on the boxes
labeled since it was trained, with a replay sample of the images it was trained on held to its own answers there, so
box pre-labels follow new labels between trainings without the champion's skill drifting away.

What classification's refresh does for a linear head on cached embeddings, done here for the centre-point detector:
its backbone stays frozen (its features are computed once per image), only the three small heads learn, from the
champion's weights each time (refreshes never build on each other, so they cannot drift). The update is held to the
champion's bar on the same test images (``decide_detection_promotion``); one that fails it is kept for the record and
never serves. A refresh never becomes champion: a full training does.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from sqlalchemy import func, select
from torch.nn import functional as F

from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.serving.detection import CENTERNET, Detections, decode_centernet
from flywheel.serving.registry import champion, prune_refreshed_heads
from flywheel.training.artefacts import checkpoint_bytes, load_model
from flywheel.training.datasets import load_arrays
from flywheel.training.detection_eval import coco_figures, decide_detection_promotion, image_f1
from flywheel.training.detection_export import (
    compare_with_torch,
    detector_metadata,
    export_detector,
    export_is_faithful,
)
from flywheel.training.detection_fit import BoxTargets, augmented, box_augmentation, box_class_weights
from flywheel.training.detection_job import EXPORT_CHECK_IMAGES, box_targets, upright_sizes
from flywheel.training.detectors import CenterNetSmall, centernet_loss
from flywheel.training.fit import TrainConfig, to_tensor
from flywheel.training.snapshots import BoxItem, build_snapshot, load_box_items
from storage.models import Annotation, DatasetSnapshot, ModelKind, ModelStatus, ModelVersion, Project, Split, utcnow
from storage.projects import project_settings

STEPS = 40  # optimizer steps of the heads: about 2 s at 64 px, 5 s at 96 px on one thread
BATCH = 16  # half new labels, half replay
LEARNING_RATE = 3e-4  # a tenth of a full training's peak: a nudge from the champion's heads, not a new start
MAX_NEW = 256  # the newest labels learnt from, however long the champion has served
MIN_REPLAY = 64
VIEWS = 2  # augmented copies of each image learnt from, besides the image itself


def new_and_replay(items: list[BoxItem], trained: list[BoxItem], *, seed: int) -> tuple[list[BoxItem], list[BoxItem]]:
    """The training items whose boxes the champion has not seen (new, or corrected since), the newest ``MAX_NEW``;
    and a replay sample of the others (as many, at least ``MIN_REPLAY``), so the heads learn the new without
    forgetting the old."""
    seen = {(i.image_id, _boxes_key(i.boxes)) for i in trained}
    train = [i for i in items if i.split == Split.train]
    new = [i for i in train if (i.image_id, _boxes_key(i.boxes)) not in seen][-MAX_NEW:]
    fresh_ids = {i.image_id for i in new}
    rest = [i for i in train if i.image_id not in fresh_ids]
    chosen = np.random.default_rng(seed).permutation(len(rest))[: max(len(new), MIN_REPLAY)]
    return new, [rest[k] for k in sorted(chosen)]


def _boxes_key(boxes: list[dict[str, Any]]) -> tuple[tuple[Any, ...], ...]:
    return tuple(sorted((b["label"], b["x"], b["y"], b["w"], b["h"]) for b in boxes))


@torch.no_grad()
def _features(network: CenterNetSmall, arrays: np.ndarray, *, batch: int = 64) -> torch.Tensor:
    return torch.cat([network.features(to_tensor(arrays[s : s + batch])) for s in range(0, len(arrays), batch)])


def fine_tune_heads(
    network: CenterNetSmall,
    features: torch.Tensor,
    targets: list[BoxTargets],
    *,
    new: np.ndarray,
    num_classes: int,
    seed: int,
    steps: int = STEPS,
) -> list[float]:
    """Train ``network``'s heads in place on precomputed ``features``, ``new`` (a mask) marking the new labels' ones:
    each batch draws half from those, learnt from their boxes, half from the rest (the replay), held to what the
    heads answered there before (``replay_loss``). Returns the loss of each step.

    Replaying the old images' boxes instead let the heads go on fitting the champion's own training images:
    measured on the freshness bench's scenes, their scores rose (boxes above the shown score grew by 5-15%), F1 at
    that score fell and most updates failed the champion's gate. Held to the champion's answers, the replay only
    keeps what the champion knew, and the new boxes are all that moves the heads."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    heads = [network.heatmap, network.size, network.offset]
    parameters = [p for head in heads for p in head.parameters()]
    optimizer = torch.optim.Adam(
        parameters, lr=LEARNING_RATE
    )  # no decay: it would pull every weight off the champion's
    weights = box_class_weights(targets, num_classes)
    network.eval()  # the frozen backbone's batch norms keep their statistics; the heads have none
    # The champion's heads answer each replayed batch afresh: computed the same way, their answers match the tuned
    # heads' to the bit until these move, so rounding noise gives no gradient for Adam to scale up into steps.
    champion = copy.deepcopy(network).requires_grad_(False)
    fresh, old = np.flatnonzero(new), np.flatnonzero(~new)
    losses = []
    for _ in range(steps):
        learn = rng.choice(fresh, BATCH // 2) if len(fresh) else fresh
        keep = rng.choice(old, BATCH // 2) if len(old) else old
        optimizer.zero_grad()
        loss = torch.zeros(())
        if len(learn):
            loss = loss + centernet_loss(
                network.heads(features[learn]),
                [targets[i].boxes for i in learn],
                [targets[i].classes for i in learn],
                num_classes=num_classes,
                class_weights=weights,
            )
        if len(keep):
            objects = sum(len(targets[i].boxes) for i in keep)
            loss = loss + replay_loss(network, champion, features[keep], objects=objects)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 10.0)
        optimizer.step()
        losses.append(float(loss.item()))
    return losses


def replay_loss(
    network: CenterNetSmall, champion: CenterNetSmall, features: torch.Tensor, *, objects: int
) -> torch.Tensor:
    """How far ``network``'s heads have moved from ``champion``'s on the replayed images' ``features``: the
    heatmaps' binary KL divergence summed over their objects (as the focal loss is), the log sizes' and offsets'
    mean L1, as in Learning without Forgetting (Li and Hoiem 2017). Taken from the logits, its gradient is
    sigmoid(z) - sigmoid(z0): exactly zero where nothing moved (from probabilities it cancels only up to rounding,
    which Adam scales up into full steps)."""
    with torch.no_grad():
        logits, log_size, offset = (head(features) for head in (champion.heatmap, champion.size, champion.offset))
        held = torch.sigmoid(logits)
        entropy = F.binary_cross_entropy_with_logits(logits, held, reduction="sum")
    kl = F.binary_cross_entropy_with_logits(network.heatmap(features), held, reduction="sum") - entropy
    size = F.l1_loss(network.size(features).clamp(max=8), log_size.clamp(max=8))  # as ``heads`` reads them
    return kl / max(objects, 1) + size + F.l1_loss(network.offset(features), offset)


def _views(config: TrainConfig, arrays: np.ndarray, targets: list[BoxTargets]) -> tuple[np.ndarray, list[BoxTargets]]:
    """``VIEWS`` augmented copies of the images (the training's own augmentation), so the heads see what the champion
    was trained on, not only the plain images; none when its training did not augment."""
    if not config.augment:
        return arrays[:0], []
    images, out = [], []
    for view in range(VIEWS):
        augment = box_augmentation(config, arrays.shape[1], seed=config.seed + view)
        x, boxes, classes = augmented(augment, arrays, targets)
        images.append(x)
        out += [BoxTargets(b, c) for b, c in zip(boxes, classes, strict=True)]
    return np.concatenate(images), out


@torch.no_grad()
def _detect_from(network: CenterNetSmall, features: torch.Tensor) -> list[Detections]:
    heat, size, offset, embedding = network.heads(features)
    return decode_centernet(heat.numpy(), size.numpy(), offset.numpy(), embedding.numpy())


def run_detection_refresh(ctx: JobContext) -> dict[str, Any]:
    """Fine-tune the champion detector's heads on the labels it has not seen, check it against the champion on the
    test split, and serve it (its own checked ONNX file) when it is not worse."""
    with ctx.db.session() as session:
        existing = session.scalars(select(ModelVersion).where(ModelVersion.job_id == ctx.job_id)).first()
        if existing is not None and existing.status not in (ModelStatus.training, ModelStatus.failed):
            return {"model_id": existing.id, "message": f"model {existing.id} was made by an earlier attempt"}
        best = champion(session, project_id=ctx.project_id)
        if best is None:
            raise JobFailed("no champion detector yet: a refresh fine-tunes the champion's heads; train one first")
        if best.architecture != CENTERNET:
            raise JobFailed(
                f"a fresh update fine-tunes {CENTERNET}'s heads; the champion is {best.architecture}, whose "
                "pre-labels follow new labels at its next training"
            )
        project = session.get_one(Project, ctx.project_id)
        tolerance = project_settings(project).training.promotion_tolerance
        # Read before the snapshot, so a label that lands in between is never claimed as seen when it is not.
        through = session.scalar(select(func.max(Annotation.id)).where(Annotation.project_id == project.id))
        snapshot = build_snapshot(session, ctx.blobs, project=project)
        trained_on = session.get_one(DatasetSnapshot, best.snapshot_id) if best.snapshot_id else None
        model = existing or ModelVersion(project_id=ctx.project_id, job_id=ctx.job_id, kind=ModelKind.refresh)
        # A retry describes what it fine-tunes now (the champion may have changed since the first attempt).
        model.snapshot_id, model.parent_id, model.labels_through = snapshot.id, best.id, through
        model.architecture, model.input_size, model.labels = best.architecture, best.input_size, list(best.labels)
        model.seed = best.seed
        model.hyperparameters = {
            "fine_tuned": "the champion's heads, its backbone frozen",
            "steps": STEPS,
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "replay": f"as many images the champion was trained on as new ones, at least {MIN_REPLAY}, held to its "
            "answers there",
        }
        model.status = ModelStatus.training
        session.add(model)
        session.flush()
        model_id = model.id
    try:
        return _fine_tune(ctx, model_id, best=best, snapshot=snapshot, trained_on=trained_on, tolerance=tolerance)
    except BaseException:  # failed, cancelled or killed: the row never stays "training"
        with ctx.db.session() as session:
            row = session.get_one(ModelVersion, model_id)
            if row.status is ModelStatus.training:
                row.status = ModelStatus.failed
        raise


def _fine_tune(
    ctx: JobContext,
    model_id: int,
    *,
    best: ModelVersion,
    snapshot: DatasetSnapshot,
    trained_on: DatasetSnapshot | None,
    tolerance: float,
) -> dict[str, Any]:
    """The refresh's work on model row ``model_id``: fine-tune, judge, export, store."""
    labels = list(best.labels)
    _, items = load_box_items(ctx.blobs, snapshot)
    known = set(labels)
    items = [BoxItem(i.image_id, i.sha256, [b for b in i.boxes if b["label"] in known], i.split) for i in items]
    _, old_items = load_box_items(ctx.blobs, trained_on) if trained_on is not None else ([], [])
    new, replay = new_and_replay(items, old_items, seed=best.seed)
    if not new and not replay:
        raise JobFailed("no labeled training image to fine-tune on; label a few images first")
    tests = [i for i in items if i.split == Split.test]
    with ctx.db.read_session() as session:
        sizes = upright_sizes(session, [i.image_id for i in new + replay + tests])

    ctx.progress(0.05, f"reading {len(new)} new, {len(replay)} replayed and {len(tests)} test images")
    tuned = new + replay
    arrays = load_arrays(ctx.blobs, [i.sha256 for i in tuned + tests], size=best.input_size)
    torch.set_num_threads(ctx.settings.train_threads)
    network = copy.deepcopy(load_model(ctx.blobs, best))
    assert isinstance(network, CenterNetSmall)
    for parameter in network.features.parameters():
        parameter.requires_grad_(False)
    features = _features(network, arrays)
    targets = box_targets(tuned + tests, sizes, labels=labels, input_size=best.input_size)
    test_features, test_t = features[len(tuned) :], targets[len(tuned) :]
    before = _detect_from(network, test_features)  # the champion's own answers, on the same features

    ctx.progress(0.2, f"fine-tuning the heads on {len(new)} new labels and {len(replay)} replayed")
    views, view_targets = _views(TrainConfig(**best.hyperparameters), arrays[: len(tuned)], targets[: len(tuned)])
    view_features = torch.cat([features[: len(tuned)], _features(network, views)])
    is_new = np.tile(np.arange(len(tuned)) < len(new), 1 + VIEWS if len(views) else 1)
    losses = fine_tune_heads(
        network,
        view_features,
        targets[: len(tuned)] + view_targets,
        new=is_new,
        num_classes=len(labels),
        seed=best.seed,
    )
    metrics: dict[str, Any] = {
        "task": "detection",
        "new_items": len(new),
        "replay_items": len(replay),
        "test_items": len(tests),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    decision: dict[str, Any] = {"promote": True, "reason": "no labeled test images to compare it with the champion"}
    if tests:
        ctx.progress(0.6, f"judging it against champion {best.id} on {len(tests)} test images")
        after = _detect_from(network, test_features)
        figures = coco_figures(test_t, after, labels=labels)
        held = coco_figures(test_t, before, labels=labels)
        result = decide_detection_promotion(
            champion_f1=np.array([image_f1(t, d) for t, d in zip(test_t, before, strict=True)]),
            candidate_f1=np.array([image_f1(t, d) for t, d in zip(test_t, after, strict=True)]),
            champion_map50=held.map50,
            candidate_map50=figures.map50,
            tolerance=tolerance,
        )
        metrics |= {"test_map": figures.map, "test_map50": figures.map50, "per_class": figures.per_class}
        decision = {**asdict(result), "compared_with": "champion", "champion_id": best.id}

    ctx.progress(0.75, "exporting ONNX")
    with ctx.db.read_session() as session:
        row = session.get_one(ModelVersion, model_id)
        metadata = detector_metadata(row, network)
        weights = checkpoint_bytes(network.state_dict(), model=row)
    onnx_bytes = export_detector(network, best.input_size, metadata=metadata)
    check = compare_with_torch(network, onnx_bytes, arrays[len(tuned) :][:EXPORT_CHECK_IMAGES] if tests else arrays)
    if not export_is_faithful(check):
        raise JobFailed(f"the ONNX export differs from PyTorch ({check}); not stored")
    serves = bool(decision["promote"])
    with ctx.db.session() as session:
        stored = session.get_one(ModelVersion, model_id)
        # An update that fails the champion's bar is kept for the record but never serves.
        stored.status = ModelStatus.candidate if serves else ModelStatus.retired
        stored.metrics = {**metrics, "onnx_check": check}
        stored.decision = decision
        stored.onnx_sha256 = ctx.blobs.put_bytes(onnx_bytes)
        stored.weights_sha256 = ctx.blobs.put_bytes(weights)
        stored.finished_at = utcnow()
        pruned = prune_refreshed_heads(
            session,
            ctx.blobs,
            project_id=ctx.project_id,
            keep=ctx.settings.refresh_heads_kept,
            grace_seconds=ctx.settings.refresh_prune_grace_seconds,
        )
    shown = f"{metrics['test_map50']:.3f}" if "test_map50" in metrics else "n/a"
    outcome = "serving" if serves else f"not serving, the champion does: {decision['reason']}"
    return {
        "model_id": model_id,
        "new_labels": len(new),
        "replayed": len(replay),
        "test_map50": metrics.get("test_map50"),
        "serving": serves,
        "pruned": pruned,
        "message": f"fine-tuned the heads of detector {best.id} on {len(new)} new labels and {len(replay)} replayed "
        f"(test mAP@.5 {shown}): {outcome}",
    }
