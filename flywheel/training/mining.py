"""Mining: score the unlabeled pool with the serving model, put the strategy's choice at the front of the
labeling queue, and send back training labels the model firmly contradicts.

Scoring streams images in id order through the champion's backbone (cached embeddings are reused)
and the serving head, and stores one prediction per (model, image); images the model has scored
already are skipped, so a retried job continues where the last attempt stopped. Choosing reads the
scores back in chunks and keeps only a shortlist, so memory does not grow with the pool.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from annotation.curation import send_for_review
from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.labelstudio.backend import Backend
from flywheel.labelstudio.connect import push_predictions
from flywheel.serving.heads import head_probabilities, read_head
from flywheel.serving.inference import Predictor, model_version
from flywheel.serving.preprocess import to_array
from flywheel.serving.registry import serving_model
from flywheel.training.artefacts import embed_and_predict, full_network
from flywheel.training.refresh import cached_embeddings
from flywheel.training.strategies import Pool, RandomSampling, get_strategy, shortlist, summarize
from storage.blobs import BlobStore
from storage.db import Database, insert_new
from storage.errors import NotFound
from storage.ingest import Limits, shuffled_priority
from storage.models import (
    Embedding,
    Image,
    LabelStudioLink,
    ModelKind,
    ModelVersion,
    Prediction,
    Project,
    QueueTier,
    Split,
)
from storage.projects import MiningSettings, project_settings
from storage.settings import Settings

SCORE_BATCH = 256
READ_CHUNK = 5000
MISSING_SHOWN = 100
FIRST = 1.0  # mined images get priorities above this; unmined ones keep their shuffled place in [0, 1)
RELABEL_PREFIX = "relabel: "

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    model: ModelVersion  # its head gives the probabilities
    backbone: ModelVersion  # the full model whose network gives the embeddings


def serving_parts(session: Session, *, project_id: int) -> Serving:
    """The serving model and its backbone; JobFailed when the project has no usable model."""
    model = serving_model(session, project_id=project_id)
    if model is None:
        raise JobFailed(
            "no model yet: mining ranks images by what the model is unsure of. Label at least training.min_labels "
            f'images (a training starts by itself) or start one: POST /api/v1/projects/{project_id}/jobs {{"kind": '
            '"train"}'
        )
    backbone = session.get_one(ModelVersion, model.parent_id) if model.kind == ModelKind.refresh else model
    if backbone.weights_sha256 is None or model.head_sha256 is None:
        raise JobFailed(f"model {model.id} has no files yet; mine again once its training or refresh has finished")
    return Serving(model, backbone)


def _unlabeled() -> ColumnElement[bool]:
    return Image.queue_tier == int(QueueTier.fresh)


def _relabel_candidate() -> ColumnElement[bool]:
    """A labeled training image resting on one vote (or a tie), not waiting in the queue, not gold."""
    return and_(
        Image.split == Split.train,
        Image.consensus_label.is_not(None),
        Image.gold_label.is_(None),
        Image.queue_tier.is_(None),
        or_(Image.label_count == 1, Image.consensus_tie),
    )


def _to_score(project_id: int, model_id: int) -> Select[int, str]:
    scored = select(Prediction.id).where(Prediction.model_id == model_id, Prediction.image_id == Image.id).exists()
    return select(Image.id, Image.sha256).where(
        Image.project_id == project_id, or_(_unlabeled(), _relabel_candidate()), ~scored
    )


@dataclass
class Scoring:
    scored: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)
    missing_count: int = 0


@dataclass(frozen=True)
class _Batch:
    ids: list[int]
    cached: dict[int, np.ndarray]
    decoded: dict[int, np.ndarray]  # image id -> array, for the images whose embedding is not cached
    unreadable: dict[int, str]  # image id -> why


def score_pool(
    db: Database,
    blobs: BlobStore,
    *,
    project_id: int,
    serving: Serving,
    on_progress: Callable[[int, int], None] | None = None,
) -> Scoring:
    """Store the serving model's prediction for every image mining looks at that it has not scored yet.

    Batches are read and decoded in one background thread and stored in another while the network works
    on the batch between them. An image whose file is missing or unreadable is skipped and reported.
    """
    model, backbone = serving.model, serving.backbone
    assert backbone.weights_sha256 is not None and model.head_sha256 is not None
    scope = _to_score(project_id, model.id)
    with db.read_session() as session:
        total = session.scalar(select(func.count()).select_from(scope.subquery())) or 0
    network = full_network(blobs, backbone.weights_sha256)
    weight, bias = read_head(blobs, model.head_sha256)
    version = model_version(model)
    outcome = Scoring()

    def read(after: int) -> _Batch | None:
        with db.read_session() as session:
            rows = session.execute(scope.where(Image.id > after).order_by(Image.id).limit(SCORE_BATCH)).all()
        if not rows:
            return None
        cached = cached_embeddings(db, backbone.id, [image_id for image_id, _ in rows])
        decoded, unreadable = {}, {}
        for image_id, sha in rows:
            if image_id not in cached:
                try:
                    decoded[image_id] = _decode(blobs, sha, backbone.input_size)
                except NotFound:
                    unreadable[image_id] = "its file is missing from the blob store"
                except (OSError, ValueError, SyntaxError) as exc:
                    unreadable[image_id] = f"its file cannot be decoded: {exc}"
        return _Batch([image_id for image_id, _ in rows], cached, decoded, unreadable)

    def stored(batch: _Batch, write: Future[int]) -> None:
        outcome.scored += write.result()
        outcome.missing_count += len(batch.unreadable)
        room = MISSING_SHOWN - len(outcome.missing)
        outcome.missing += [{"image_id": i, "reason": why} for i, why in list(batch.unreadable.items())[:room]]
        if on_progress:
            on_progress(outcome.scored + outcome.missing_count, total)

    # Three stages overlap: reading and decoding the next batch, the network on this one, storing the last.
    with (
        ThreadPoolExecutor(1, thread_name_prefix="mining-reader") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="mining-writer") as writer,
    ):
        upcoming = reader.submit(read, 0)
        writing: tuple[_Batch, Future[int]] | None = None
        while (batch := upcoming.result()) is not None:
            upcoming = reader.submit(read, batch.ids[-1])
            new_ids = list(batch.decoded)
            vectors = dict(batch.cached)
            if new_ids:
                embeddings, _ = embed_and_predict(network, np.stack([batch.decoded[i] for i in new_ids]))
                vectors.update(zip(new_ids, embeddings, strict=True))
            ids = [image_id for image_id in batch.ids if image_id in vectors]
            probabilities = head_probabilities(np.stack([vectors[i] for i in ids]), weight, bias) if ids else None
            write = writer.submit(
                _store,
                db,
                backbone_id=backbone.id,
                model=model,
                version=version,
                ids=ids,
                new_ids=new_ids,
                vectors=vectors,
                probabilities=probabilities,
            )
            if writing is not None:
                stored(*writing)  # at most one batch waits to be written: memory stays bounded
            writing = (batch, write)
        if writing is not None:
            stored(*writing)
    return outcome


def _decode(blobs: BlobStore, sha256: str, size: int) -> np.ndarray:
    with blobs.open(sha256) as stream, PILImage.open(stream) as image:
        return to_array(image, size)


def _store(
    db: Database,
    *,
    backbone_id: int,
    model: ModelVersion,
    version: str,
    ids: list[int],
    new_ids: list[int],
    vectors: dict[int, np.ndarray],
    probabilities: np.ndarray | None,
) -> int:
    """Store one batch's new embeddings and its predictions; how many images were scored."""
    if probabilities is None:
        return 0
    confidence, margin, entropy = (a.tolist() for a in summarize(probabilities))
    predicted = probabilities.argmax(axis=1).tolist()
    with db.session() as session:
        if new_ids:
            insert_new(
                session,
                Embedding,
                [{"model_id": backbone_id, "image_id": i, "vector": vectors[i].tobytes()} for i in new_ids],
            )
        insert_new(
            session,
            Prediction,
            [
                {
                    "image_id": image_id,
                    "model_id": model.id,
                    "model_version": version,
                    "label": model.labels[predicted[k]],
                    "confidence": confidence[k],
                    "margin": margin[k],
                    "entropy": entropy[k],
                }
                for k, image_id in enumerate(ids)
            ],
        )
    return len(ids)


def _scored_chunks(db: Database, *, project_id: int, model_id: int, split: Split) -> Iterator[Pool]:
    """The scores of the unlabeled images of one split, in id order, ``READ_CHUNK`` at a time."""
    after = 0
    while True:
        with db.read_session() as session:
            rows = session.execute(
                select(Image.id, Prediction.confidence, Prediction.margin, Prediction.entropy)
                .join(Prediction, and_(Prediction.image_id == Image.id, Prediction.model_id == model_id))
                .where(Image.project_id == project_id, _unlabeled(), Image.split == split, Image.id > after)
                .order_by(Image.id)
                .limit(READ_CHUNK)
            ).all()
        if not rows:
            return
        after = rows[-1][0]
        values = np.array(rows, dtype=np.float64)
        yield Pool(
            ids=values[:, 0].astype(np.int64), confidence=values[:, 1], margin=values[:, 2], entropy=values[:, 3]
        )


def choose_first(db: Database, *, project_id: int, serving: Serving, settings: MiningSettings) -> dict[str, Any]:
    """Rank the scored unlabeled pool and give the chosen images the highest priorities, in the strategy's order.

    The strategy chooses among training-split images. Test-split images are picked at random at their share
    of the pool and interleaved, so the test set stays an unbiased sample of the data.
    """
    strategy = get_strategy(settings.strategy)
    used = strategy.name
    if strategy.needs_disagreement:  # a classifier's refresh is its head refitted, not a second opinion
        fallback = "margin_kcenter" if strategy.needs_embeddings else "margin"
        strategy, used = get_strategy(fallback), f"{fallback} ({strategy.name} is for detection projects)"
    model_id = serving.model.id
    with db.read_session() as session:
        counts = dict(
            session.execute(
                select(Image.split, func.count())
                .join(Prediction, and_(Prediction.image_id == Image.id, Prediction.model_id == model_id))
                .where(Image.project_id == project_id, _unlabeled())
                .group_by(Image.split)
            ).all()
        )
    train_left, test_left = counts.get(Split.train, 0), counts.get(Split.test, 0)
    n = settings.batch_size
    picked: list[int] = []
    if train_left:
        candidates = shortlist(
            strategy,
            _scored_chunks(db, project_id=project_id, model_id=model_id, split=Split.train),
            n,
            seed=settings.seed,
        )
        if strategy.needs_embeddings:
            vectors = cached_embeddings(db, serving.backbone.id, candidates.ids.tolist())
            candidates = Pool(
                ids=candidates.ids,
                confidence=candidates.confidence,
                margin=candidates.margin,
                entropy=candidates.entropy,
                embeddings=np.stack([vectors[i] for i in candidates.ids.tolist()]),
            )
        picked = candidates.ids[strategy.query(candidates, n, seed=settings.seed)].tolist()
    tests = min(test_left, round(len(picked) * test_left / train_left) if train_left else n)
    test_picked: list[int] = []
    if tests:
        random = RandomSampling()
        sample = shortlist(
            random,
            _scored_chunks(db, project_id=project_id, model_id=model_id, split=Split.test),
            tests,
            seed=settings.seed,
        )
        test_picked = sample.ids[random.query(sample, tests, seed=settings.seed)].tolist()
    order = interleave(picked, test_picked)
    put_first(db, project_id=project_id, image_ids=order)
    return {
        "strategy": used,
        "pool": {"train": train_left, "test": test_left},
        "chosen": len(order),
        "first": order[:20],
    }


def interleave(main: list[int], extra: list[int]) -> list[int]:
    """``extra`` spread evenly through ``main``, never ahead of main's first item when it has at least as many."""
    keyed = [((k + 1) / (len(main) + 1), 0, item) for k, item in enumerate(main)]
    keyed += [((k + 1) / (len(extra) + 1), 1, item) for k, item in enumerate(extra)]
    return [item for _, _, item in sorted(keyed)]


def put_first(db: Database, *, project_id: int, image_ids: list[int]) -> None:
    """Serve these images first, in this order; those an earlier pass put first go back to their shuffled place."""
    with db.session() as session:
        earlier = session.execute(
            select(Image.id, Image.sha256).where(
                Image.project_id == project_id,
                or_(Image.queue_tier.is_(None), _unlabeled()),
                Image.priority >= FIRST,
            )
        ).all()
        if earlier:
            session.execute(update(Image), [{"id": i, "priority": shuffled_priority(sha)} for i, sha in earlier])
        if image_ids:
            top = FIRST + len(image_ids)
            session.execute(update(Image), [{"id": i, "priority": top - rank} for rank, i in enumerate(image_ids)])


def send_relabels(
    db: Database, blobs: BlobStore, *, project_id: int, serving: Serving, settings: MiningSettings
) -> list[dict[str, Any]]:
    """Send back for review the single-vote training labels the serving model contradicts (it predicts another
    label with at least ``relabel_confidence``, or gives the label at most ``relabel_below``), the least
    believable first, while no more than ``relabel_share`` x ``batch_size`` wait at once.

    The model has seen these labels in training, so contradicting one anyway is strong evidence. The
    review goes to another annotator: nobody is served an image twice.
    """
    limit = math.floor(settings.relabel_share * settings.batch_size)
    with db.read_session() as session:
        waiting = (
            session.scalar(
                select(func.count()).where(
                    Image.project_id == project_id,
                    Image.queue_tier == int(QueueTier.review),
                    Image.review_reason.startswith(RELABEL_PREFIX, autoescape=True),
                )
            )
            or 0
        )
    room = limit - waiting
    if room <= 0:
        return []
    model = serving.model
    assert model.head_sha256 is not None
    weight, bias = read_head(blobs, model.head_sha256)
    index = {label: k for k, label in enumerate(model.labels)}
    worst: list[tuple[float, int, str, str, float]] = []  # a max-heap on the probability, by negation
    after = 0
    while True:
        with db.read_session() as session:
            rows = session.execute(
                select(Image.id, Image.consensus_label, Embedding.vector)
                .join(Embedding, and_(Embedding.image_id == Image.id, Embedding.model_id == serving.backbone.id))
                .where(Image.project_id == project_id, _relabel_candidate(), Image.id > after)
                .order_by(Image.id)
                .limit(READ_CHUNK)
            ).all()
        if not rows:
            break
        after = rows[-1][0]
        known = [(image_id, label, vector) for image_id, label, vector in rows if label in index]
        if not known:
            continue
        probabilities = head_probabilities(
            np.stack([np.frombuffer(vector, dtype=np.float32) for _, _, vector in known]), weight, bias
        )
        for (image_id, label, _), row in zip(known, probabilities, strict=True):
            given, top = float(row[index[label]]), int(row.argmax())
            contradicted = top != index[label] and row[top] >= settings.relabel_confidence
            if contradicted or given <= settings.relabel_below:
                entry = (-given, image_id, label, model.labels[top], float(row[top]))
                if len(worst) < room:
                    heapq.heappush(worst, entry)
                elif entry > worst[0]:
                    heapq.heapreplace(worst, entry)
    sent = []
    with db.session() as session:
        project = session.get_one(Project, project_id)
        for negated, image_id, label, predicted, confidence in sorted(worst, reverse=True):
            reason = (
                f"{RELABEL_PREFIX}the model gives the label {label!r} a probability of {-negated:.3f} and predicts "
                f"{predicted!r} ({confidence:.3f}); label it afresh"
            )
            (image,) = send_for_review(session, project=project, image_ids=[image_id], reason=reason)
            if image.queue_tier is None:
                continue  # every annotator member has labeled it: nobody is left to ask
            image.priority = 1.0 + negated  # the least believable label first among reviews
            sent.append({"image_id": image_id, "label": label, "probability": -negated, "predicted": predicted})
    return sent


def mine(
    db: Database, blobs: BlobStore, *, project_id: int, on_progress: Callable[[float, str], None] | None = None
) -> dict[str, Any]:
    """One mining pass: score, put the strategy's choice first, send back contradicted labels; a summary."""
    with db.read_session() as session:
        serving = serving_parts(session, project_id=project_id)
        settings = project_settings(session.get_one(Project, project_id)).mining

    def scored(done: int, total: int) -> None:
        if on_progress:
            on_progress(0.9 * done / max(total, 1), f"scored {done}/{total} images")

    scoring = score_pool(db, blobs, project_id=project_id, serving=serving, on_progress=scored)
    if on_progress:
        on_progress(0.9, "choosing the next images to label")
    chosen = choose_first(db, project_id=project_id, serving=serving, settings=settings)
    if on_progress:
        on_progress(0.95, "looking for labels the model contradicts")
    relabels = send_relabels(db, blobs, project_id=project_id, serving=serving, settings=settings)
    skipped = f"; {scoring.missing_count} skipped (file missing or unreadable)" if scoring.missing_count else ""
    return {
        "model_id": serving.model.id,
        "model_version": model_version(serving.model),
        "scored": scoring.scored,
        "missing": scoring.missing,
        "missing_count": scoring.missing_count,
        **chosen,
        "relabel": relabels,
        "message": (
            f"model {serving.model.id} scored {scoring.scored} new images{skipped}; {chosen['strategy']} put "
            f"{chosen['chosen']} images first; {len(relabels)} labels sent back for review"
        ),
    }


def run_mining(ctx: JobContext) -> dict[str, Any]:
    summary = mine(ctx.db, ctx.blobs, project_id=ctx.project_id, on_progress=ctx.progress)
    pushed = push_after_mining(ctx.db, ctx.blobs, settings=ctx.settings, project_id=ctx.project_id)
    return {**summary, **({"labelstudio": pushed} if pushed else {})}


def push_after_mining(db: Database, blobs: BlobStore, *, settings: Settings, project_id: int) -> dict[str, Any] | None:
    """A project connected to Label Studio gets fresh predictions there for the tasks whose priority changed, so
    its sort by prediction score follows this pass. A failure to reach Label Studio is noted, not a failed pass."""
    with db.read_session() as session:
        if session.get(LabelStudioLink, project_id) is None:
            return None
    backend = Backend(db=db, blobs=blobs, limits=Limits.from_settings(settings), predictor=Predictor(blobs))
    try:
        pushed = push_predictions(backend, project_id=project_id)
    except Exception as exc:  # Label Studio down or refusing: mining itself succeeded, the next pass pushes again
        log.warning("could not push predictions of project %s to Label Studio: %s", project_id, exc)
        return {"pushed": 0, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"pushed": pushed.tasks, "model_version": pushed.model_version}
