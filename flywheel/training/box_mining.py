"""Mining in a detection project: the serving detector scores the unlabeled images, the project's strategy puts
those it is least sure about (spread out by k-center on its embeddings) first, and boxes it confidently contradicts
go back for review.

The same strategies, test-split sampling and queue priorities as classification (``flywheel.training.mining``);
what differs is how an image's uncertainty is read from boxes (``image_uncertainty``), the second opinion a fresh
update gives (``box_disagreement`` between it and the champion it updates), and what a contradiction is.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import replace
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image as PILImage
from scipy.optimize import linear_sum_assignment
from sqlalchemy import func, or_, select

from annotation.curation import send_for_review
from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.serving.detection import Detections, box_ious, run_detector
from flywheel.serving.inference import model_version
from flywheel.serving.preprocess import to_array
from flywheel.serving.registry import serving_model
from flywheel.training.mining import FIRST, READ_CHUNK, RELABEL_PREFIX, SCORE_BATCH, interleave, put_first
from flywheel.training.strategies import Pool, RandomSampling, get_strategy
from storage.blobs import BlobStore
from storage.db import Database
from storage.models import Image, ModelKind, ModelVersion, Project, QueueTier, Split
from storage.projects import MiningSettings, project_settings

UNCERTAIN_BAND = (0.1, 0.9)  # boxes scored here are the detector's open questions; outside it, it has decided
MATCH_IOU = 0.5


def image_uncertainty(found: Detections) -> tuple[float, float]:
    """(confidence, entropy) of one image for the query strategies. The confidence is one minus the doubts of its
    boxes in the uncertain band added up, a box's doubt ``min(s, 1 - s)`` of its score: one box gives ``max(s, 1 -
    s)`` (0.5 is a coin toss), 1.0 when no box is in the band, and an image with several open questions ranks below
    one with a single one as uncertain (each label answers them all; it can go below 0). The entropy is the largest
    entropy of a box's class probabilities (its classes' scores at its centre, normalized; nats; 0 without them)."""
    low, high = UNCERTAIN_BAND
    band = found.scores[(found.scores >= low) & (found.scores <= high)]
    confidence = 1.0 - float(np.minimum(band, 1 - band).sum())
    entropy = 0.0
    if found.class_scores is not None and len(found.class_scores):
        p = found.class_scores / np.maximum(found.class_scores.sum(axis=1, keepdims=True), 1e-12)
        entropy = float((-(p * np.log(np.clip(p, 1e-12, 1))).sum(axis=1)).max())
    return confidence, entropy


def box_disagreement(first: Detections, second: Detections, *, min_score: float = UNCERTAIN_BAND[0]) -> float:
    """How much two detectors' answers on one image differ, 0 (the same boxes, classes and scores) to 1 (nothing in
    common): one minus a score-weighted F1, where a pair of boxes of one class overlapping at IoU 0.5 agrees by the
    lower of their scores, pairs chosen to agree most (scipy's assignment solver). Boxes scored below ``min_score``
    are ignored; two empty answers agree."""
    a, b = first.above(min_score), second.above(min_score)
    total = float(a.scores.sum() + b.scores.sum())
    if total == 0:
        return 0.0
    if not len(a.scores) or not len(b.scores):
        return 1.0
    same = (box_ious(a.boxes, b.boxes) >= MATCH_IOU) & (a.classes[:, None] == b.classes[None, :])
    agree = np.where(same, np.minimum(a.scores[:, None], b.scores[None, :]), 0.0)
    rows, cols = linear_sum_assignment(agree, maximize=True)
    return float(np.clip(1 - 2 * agree[rows, cols].sum() / total, 0.0, 1.0))


def _detector(session: Any, project_id: int) -> ModelVersion:
    model = serving_model(session, project_id=project_id)
    if model is None or model.onnx_sha256 is None:
        raise JobFailed(
            "no detector yet: mining ranks images by what the detector is unsure of. Label at least "
            f'training.min_labels images or start a training: POST /api/v1/projects/{project_id}/jobs {{"kind": '
            '"train"}'
        )
    return model


def _runner(ctx: JobContext, model: ModelVersion) -> ort.InferenceSession:
    assert model.onnx_sha256 is not None
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = max(1, ctx.settings.train_threads)
    return ort.InferenceSession(
        ctx.blobs.read_bytes(model.onnx_sha256), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _detect(blobs: BlobStore, runner: ort.InferenceSession, model: ModelVersion, shas: list[str]) -> list[Detections]:
    arrays = []
    for sha in shas:
        with blobs.open(sha) as stream, PILImage.open(stream) as image:
            arrays.append(to_array(image, model.input_size))
    return run_detector(runner, np.stack(arrays)) if arrays else []


def _readable(blobs: BlobStore, sha: str) -> bool:
    try:
        with blobs.open(sha) as stream, PILImage.open(stream) as image:
            image.verify()
        return True
    except (OSError, ValueError):  # missing or damaged: skipped and listed, as classification mining does
        return False


def _score(
    db: Database,
    blobs: BlobStore,
    runner: ort.InferenceSession,
    model: ModelVersion,
    project_id: int,
    ctx: JobContext,
    *,
    second: tuple[ort.InferenceSession, ModelVersion] | None = None,
) -> tuple[dict[Split, Pool | None], list[int]]:
    """Pools of the unlabeled training and test images, scored; images whose file is unreadable are skipped. With
    ``second`` (the champion, when ``model`` is its fresh update), each image's disagreement between the two."""
    pools: dict[Split, list[Pool]] = {Split.train: [], Split.test: []}
    missing: list[int] = []
    after, done = 0, 0
    while True:
        with db.read_session() as session:
            rows = session.execute(
                select(Image.id, Image.sha256, Image.split)
                .where(Image.project_id == project_id, Image.queue_tier == int(QueueTier.fresh), Image.id > after)
                .order_by(Image.id)
                .limit(SCORE_BATCH)
            ).all()
        if not rows:
            break
        after = rows[-1].id
        readable = []
        for row in rows:
            if _readable(blobs, row.sha256):
                readable.append(row)
            else:
                missing.append(row.id)
        shas = [r.sha256 for r in readable]
        found = _detect(blobs, runner, model, shas)
        apart: np.ndarray = np.zeros(len(readable))
        if second is not None:
            # Both in the pixels of their own input; the same square image resized, so one factor brings them together.
            other = _detect(blobs, second[0], second[1], shas)
            factor = model.input_size / second[1].input_size
            apart = np.array(
                [box_disagreement(replace(o, boxes=o.boxes * factor), d) for o, d in zip(other, found, strict=True)]
            )
        for split in (Split.train, Split.test):
            chosen = [(r, d) for r, d in zip(readable, found, strict=True) if r.split == split]
            if not chosen:
                continue
            in_split = np.array([r.split == split for r in readable], dtype=bool)
            figures = np.array([image_uncertainty(d) for _, d in chosen], dtype=np.float64).reshape(-1, 2)
            vectors = [d.embedding for _, d in chosen if d.embedding is not None]
            pools[split].append(
                Pool(
                    ids=np.array([r.id for r, _ in chosen], dtype=np.int64),
                    confidence=figures[:, 0],
                    margin=2 * figures[:, 0] - 1,  # a box's margin between "object" and "not": |s - (1 - s)|
                    entropy=figures[:, 1],
                    embeddings=np.stack(vectors) if len(vectors) == len(chosen) else None,
                    disagreement=apart[in_split] if second is not None else None,
                )
            )
        done += len(rows)
        ctx.progress(min(0.85, 0.05 + done / 10_000), f"scored {done} images")
    return {split: Pool.concat(p) if p else None for split, p in pools.items()}, missing


def choose_boxes_first(pools: dict[Split, Pool | None], settings: MiningSettings) -> tuple[list[int], str]:
    """The strategy's batch among training images (k-center needs embeddings: a detector without them is ranked by
    its margin alone; disagreement needs a fresh update of the champion: without one, the margin ranks), test images
    sampled at random at their share, interleaved."""
    strategy = get_strategy(settings.strategy)
    train, test = pools[Split.train], pools[Split.test]
    n = settings.batch_size
    picked: list[int] = []
    used = strategy.name
    if strategy.needs_disagreement and train is not None and train.disagreement is None:
        fallback = "margin_kcenter" if strategy.needs_embeddings else "margin"
        strategy, used = get_strategy(fallback), f"{fallback} (no fresh update of the champion serves to disagree with)"
    if train is not None and len(train):
        if strategy.needs_embeddings and train.embeddings is None:
            strategy, used = get_strategy("margin"), f"margin ({strategy.name} needs embeddings this detector lacks)"
        picked = train.ids[strategy.query(train, min(n, len(train)), seed=settings.seed)].tolist()
    test_picked: list[int] = []
    if test is not None and len(test):
        share = round(len(picked) * len(test) / len(train)) if train is not None and len(train) else n
        tests = min(len(test), share)
        if tests:
            test_picked = test.ids[RandomSampling().query(test, tests, seed=settings.seed)].tolist()
    return interleave(picked, test_picked), used


def contradictions(
    consensus: list[dict[str, Any]], found: Detections, *, labels: list[str], confident: float, below: float
) -> list[tuple[float, str]]:
    """What a detector says against an image's boxes (upright pixels, ``found`` in the same frame), each with how
    strongly: a box it finds with at least ``confident`` that no box marks (a missed object), a box it gives at most
    ``below`` (it does not find it), a box it puts in another class with at least ``confident``."""
    truth = np.array([[b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]] for b in consensus], dtype=np.float64)
    truth = truth.reshape(-1, 4)
    ious = box_ious(truth, found.boxes) if len(truth) and len(found.boxes) else np.zeros((len(truth), len(found.boxes)))
    out = []
    for j in np.flatnonzero(found.scores >= confident):
        if not (ious[:, j] >= MATCH_IOU).any():
            box = found.boxes[j]
            out.append(
                (
                    float(found.scores[j]),
                    f"the detector finds a {labels[found.classes[j]]!r} ({found.scores[j]:.2f}) at x={box[0]:.0f}, "
                    f"y={box[1]:.0f} that no box marks",
                )
            )
    for i, b in enumerate(consensus):
        near = ious[i] >= MATCH_IOU
        same = near & (found.classes == labels.index(b["label"]))
        best_same = float(found.scores[same].max()) if same.any() else 0.0
        other = near & (found.classes != labels.index(b["label"])) & (found.scores >= confident)
        if other.any() and best_same <= below:
            j = int(np.flatnonzero(other)[np.argmax(found.scores[other])])
            out.append(
                (
                    float(found.scores[j]),
                    f"the box {i} labeled {b['label']!r} is a {labels[found.classes[j]]!r} to the detector "
                    f"({found.scores[j]:.2f})",
                )
            )
        elif best_same <= below and not (near & (found.scores > below)).any():
            out.append((1.0 - best_same, f"the detector does not find the {b['label']!r} of box {i}"))
    return sorted(out, reverse=True)


def send_box_relabels(
    db: Database,
    blobs: BlobStore,
    runner: ort.InferenceSession,
    model: ModelVersion,
    *,
    project_id: int,
    settings: MiningSettings,
) -> list[dict[str, Any]]:
    """Send back for review the training images resting on one answer whose boxes the detector contradicts, the
    strongest contradiction first, while no more than ``relabel_share`` x ``batch_size`` wait at once."""
    limit = math.floor(settings.relabel_share * settings.batch_size)
    with db.read_session() as session:
        waiting = session.scalar(
            select(func.count()).where(
                Image.project_id == project_id,
                Image.queue_tier == int(QueueTier.review),
                Image.review_reason.startswith(RELABEL_PREFIX, autoescape=True),
            )
        )
    room = limit - (waiting or 0)
    if room <= 0:
        return []
    worst: list[tuple[float, int, str]] = []
    after = 0
    while True:
        with db.read_session() as session:
            images = list(
                session.scalars(
                    select(Image)
                    .where(
                        Image.project_id == project_id,
                        Image.split == Split.train,
                        Image.consensus_boxes.is_not(None),
                        Image.gold_boxes.is_(None),
                        Image.queue_tier.is_(None),
                        or_(Image.label_count == 1, Image.consensus_tie),
                        Image.id > after,
                    )
                    .order_by(Image.id)
                    .limit(min(READ_CHUNK, SCORE_BATCH))
                )
            )
        if not images:
            break
        after = images[-1].id
        found = _detect(blobs, runner, model, [i.sha256 for i in images])
        for image, detections in zip(images, found, strict=True):
            width, height = image.upright_size
            said = contradictions(
                image.consensus_boxes or [],
                detections.scaled(width, height, model.input_size),
                labels=list(model.labels),
                confident=settings.relabel_confidence,
                below=settings.relabel_below,
            )
            if said:
                entry = (said[0][0], image.id, "; ".join(reason for _, reason in said[:3]))
                if len(worst) < room:
                    heapq.heappush(worst, entry)
                elif entry > worst[0]:
                    heapq.heapreplace(worst, entry)
    sent = []
    with db.session() as session:
        project = session.get_one(Project, project_id)
        for strength, image_id, reasons in sorted(worst, reverse=True):
            reason = f"{RELABEL_PREFIX}{reasons}; check the boxes"
            (image,) = send_for_review(session, project=project, image_ids=[image_id], reason=reason)
            if image.queue_tier is None:
                continue  # every annotator member has answered it: nobody is left to ask
            image.priority = FIRST + strength  # the strongest contradiction first among reviews
            sent.append({"image_id": image_id, "strength": strength, "reason": reason})
    return sent


def run_box_mining(ctx: JobContext) -> dict[str, Any]:
    """One mining pass in a detection project: score, put the strategy's choice first, send contradicted boxes back."""
    with ctx.db.read_session() as session:
        model = _detector(session, ctx.project_id)
        settings = project_settings(session.get_one(Project, ctx.project_id)).mining
        updated = session.get(ModelVersion, model.parent_id) if model.kind == ModelKind.refresh else None
    runner = _runner(ctx, model)
    needs_second = get_strategy(settings.strategy).needs_disagreement
    second = (_runner(ctx, updated), updated) if needs_second and updated is not None else None
    pools, missing = _score(ctx.db, ctx.blobs, runner, model, ctx.project_id, ctx, second=second)
    ctx.progress(0.9, "choosing the next images to label")
    order, strategy = choose_boxes_first(pools, settings)
    put_first(ctx.db, project_id=ctx.project_id, image_ids=order)
    ctx.progress(0.95, "looking for boxes the detector contradicts")
    relabels = send_box_relabels(ctx.db, ctx.blobs, runner, model, project_id=ctx.project_id, settings=settings)
    scored = sum(len(p) for p in pools.values() if p is not None)
    return {
        "model_id": model.id,
        "model_version": model_version(model),
        "scored": scored,
        "missing": missing[:100],
        "missing_count": len(missing),
        "strategy": strategy,
        "chosen": len(order),
        "first": order[:20],
        "relabel": relabels,
        "message": f"model {model.id} scored {scored} unlabeled images; {strategy} put {len(order)} first; "
        f"{len(relabels)} images sent back to check their boxes",
    }
