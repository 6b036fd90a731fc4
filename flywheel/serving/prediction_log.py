"""The log of ``/predict`` answers, and the capture of production images into the project's pool.

Both happen after the answer has gone out (the router hands them to a background task), so neither slows nor fails a
prediction: an error here is logged and counted in ``labelwheel_prediction_log_failures_total``, never returned.
A captured image goes through the same checks and deduplication as an upload (source ``production``) and then
waits in the labeling queue, where mining ranks it like any other image. A detector's answer is logged with its boxes,
its confidence being its top box's score (0 when it finds nothing), which ``low_confidence`` capture reads.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO

from prometheus_client import Counter
from sqlalchemy import delete, select

from flywheel.serving.detection import ScoredBox
from flywheel.serving.inference import Predictor, Served
from flywheel.serving.traffic import share_point
from storage.blobs import BlobStore
from storage.db import Database
from storage.ingest import Candidate, Ingestor, Limits, Outcome, file_opener
from storage.models import Image, ImageSource, ModelVersion, PredictionLog, Project, utcnow
from storage.projects import MonitoringSettings, project_settings

PRUNE_EVERY_SECONDS = 60.0
COPY_CHUNK = 1 << 20

FAILURES = Counter(
    "labelwheel_prediction_log_failures_total", "Prediction log or capture failures (never returned)", ["stage"]
)
CAPTURED = Counter("labelwheel_production_images_total", "Images captured from /predict, by outcome", ["outcome"])

log = logging.getLogger(__name__)
_pruned_at: dict[int, float] = {}  # project id: when this process last deleted expired log rows


@dataclass(frozen=True)
class Detected:
    """A detector's answer to a ``/predict`` request: per input its boxes, best first."""

    model: ModelVersion
    boxes: list[list[ScoredBox]]
    fallback: bool = False  # an older detector answered because the serving one could not

    @property
    def confidences(self) -> list[float]:
        """Each input's top box score, 0 without a box: what the log keeps and low-confidence capture reads."""
        return [found[0].score if found else 0.0 for found in self.boxes]


@dataclass(frozen=True)
class PredictedInput:
    name: str
    sha256: str
    # A copy of the file, for capture or for shadow models (the request's files go once the answer is sent).
    staged: Path | None = None
    capture: bool = False


def input_hashes(uploads: Sequence[tuple[str, IO[bytes]]]) -> list[str]:
    return [_sha256(stream) for _, stream in uploads]


def predicted_inputs(
    blobs: BlobStore,
    settings: MonitoringSettings,
    uploads: Sequence[tuple[str, IO[bytes]]],
    hashes: list[str],
    served: Served | Detected,
    *,
    for_shadows: bool,
) -> list[PredictedInput]:
    """Each upload with its hash; those to capture (or all of them, for shadow models) copied into a staging folder
    that ``record_predictions`` removes."""
    confidences = served.confidences if isinstance(served, Detected) else [a.confidence for a in served.answers]
    captured = [wanted(settings, sha256, confidence) for sha256, confidence in zip(hashes, confidences, strict=True)]
    keep = [i for i, capture in enumerate(captured) if capture or for_shadows]
    staged: dict[int, Path] = {}
    if keep:
        try:
            folder = blobs.make_staging_dir("predicted-")
            for i in keep:
                staged[i] = folder / f"{i}"
                uploads[i][1].seek(0)
                with staged[i].open("wb") as out:
                    shutil.copyfileobj(uploads[i][1], out, COPY_CHUNK)
        except Exception:  # a full disk, a store that refuses: the answer goes out, without capture or shadows
            FAILURES.labels("capture").inc()
            log.exception("project %s: the predicted images could not be staged", served.model.project_id)
            staged = {}
    return [
        PredictedInput(name, hashes[i], staged.get(i), captured[i] and i in staged)
        for i, (name, _) in enumerate(uploads)
    ]


def wanted(settings: MonitoringSettings, sha256: str, confidence: float) -> bool:
    """Whether an input is captured: by confidence, then sampled by its hash (the same image, the same choice)."""
    if settings.capture == "none":
        return False
    if settings.capture == "low_confidence" and confidence >= settings.capture_below:
        return False
    # Bits no other choice uses (the split takes [:8], the queue [8:24], canary routing [:8]): independent samples.
    return share_point(sha256[24:]) < settings.capture_rate


def record_predictions(
    db: Database,
    blobs: BlobStore,
    limits: Limits,
    predictor: Predictor,
    *,
    project_id: int,
    served: Served | Detected,
    inputs: list[PredictedInput],
    latency_ms: float,
    request_id: str,
    shadows: list[int],
) -> None:
    """Capture the inputs chosen for it, log each answer (``monitoring.log_days``) and run the shadow models on a
    copy of the request; never raises."""
    try:
        with db.read_session() as session:
            log_days = project_settings(session.get_one(Project, project_id)).monitoring.log_days
        in_pool = _capture(db, blobs, limits, project_id, inputs)
        if log_days > 0:
            _log(db, project_id, served, inputs, in_pool, latency_ms, request_id, "served")
            for model_id in shadows:
                _shadow(db, limits, predictor, project_id, model_id, inputs, in_pool, request_id)
            _prune(db, project_id, log_days)
    except Exception:  # the answer has been sent: what fails here is logged and counted, not returned
        FAILURES.labels("log").inc()
        log.exception("project %s: the prediction log or capture failed; the answers were sent", project_id)
    finally:
        folders = {item.staged.parent for item in inputs if item.staged is not None}
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def _shadow(
    db: Database,
    limits: Limits,
    predictor: Predictor,
    project_id: int,
    model_id: int,
    inputs: list[PredictedInput],
    in_pool: dict[str, int],
    request_id: str,
) -> None:
    """One shadow model's answers on the request's inputs, logged beside the answers sent."""
    if any(item.staged is None for item in inputs):
        return  # not staged (the store refused): nothing to predict on
    try:
        with db.read_session() as session, ExitStack() as files:
            model = session.get_one(ModelVersion, model_id)
            uploads = [(item.name, files.enter_context(item.staged.open("rb"))) for item in inputs if item.staged]
            started = time.perf_counter()
            answers = predictor.predict_with(session, model=model, uploads=uploads, limits=limits)
            latency_ms = (time.perf_counter() - started) * 1000
        _log(db, project_id, answers, inputs, in_pool, latency_ms, request_id, "shadow")
    except Exception:
        FAILURES.labels("shadow").inc()
        log.exception("project %s: shadow model %s failed on a request; the answers were sent", project_id, model_id)


def _capture(
    db: Database, blobs: BlobStore, limits: Limits, project_id: int, inputs: list[PredictedInput]
) -> dict[str, int]:
    """The pool image id of each input that is in the pool now: captured by this call or there already."""
    chosen = [item for item in inputs if item.capture]
    if chosen:
        try:
            results = Ingestor(db=db, blobs=blobs, limits=limits, workers=1).ingest(project_id, _candidates(chosen))
        except Exception:  # a full disk, a store that refuses: counted, and the log is still written
            FAILURES.labels("capture").inc()
            log.exception("project %s: capturing %d production images failed", project_id, len(chosen))
        else:
            for result in results:
                CAPTURED.labels(result.status.value).inc()
                if result.status is Outcome.rejected:
                    log.info("project %s: production image not captured: %s", project_id, result.reason)
    with db.read_session() as session:
        hashes = {item.sha256 for item in inputs}
        return dict(
            session.execute(
                select(Image.sha256, Image.id).where(Image.project_id == project_id, Image.sha256.in_(hashes))
            ).all()
        )


def _candidates(chosen: Iterable[PredictedInput]) -> Iterable[Candidate]:
    for item in chosen:
        assert item.staged is not None
        yield Candidate(name=item.name, source=ImageSource.production, open=file_opener(item.staged))


def _sha256(stream: IO[bytes]) -> str:
    stream.seek(0)
    digest = hashlib.sha256()
    while chunk := stream.read(COPY_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _log(
    db: Database,
    project_id: int,
    served: Served | Detected,
    inputs: list[PredictedInput],
    in_pool: dict[str, int],
    latency_ms: float,
    request_id: str,
    role: str,
) -> None:
    """One row per input; ``latency_ms`` is the request's model time, shared by its inputs."""
    per_input = latency_ms / max(len(inputs), 1)
    if isinstance(served, Detected):
        _log_boxes(db, project_id, served, inputs, in_pool, per_input, request_id)
        return
    with db.session() as session:
        session.add_all(
            PredictionLog(
                project_id=project_id,
                model_id=served.model.id,
                backbone_id=served.backbone.id,
                fallback=served.fallback is not None,
                input_sha256=item.sha256,
                label=answer.label,
                confidence=answer.confidence,
                latency_ms=per_input,
                embedding=embedding.astype("float32").tobytes(),
                image_id=in_pool.get(item.sha256),
                request_id=request_id,
                role=role,
            )
            for item, answer, embedding in zip(inputs, served.answers, served.embeddings, strict=True)
        )


def _log_boxes(
    db: Database,
    project_id: int,
    detected: Detected,
    inputs: list[PredictedInput],
    in_pool: dict[str, int],
    latency_ms: float,
    request_id: str,
) -> None:
    """A detector's rows: the boxes it answered, its top box's class and score (none and 0 without a box)."""
    with db.session() as session:
        session.add_all(
            PredictionLog(
                project_id=project_id,
                model_id=detected.model.id,
                backbone_id=detected.model.id,
                fallback=detected.fallback,
                input_sha256=item.sha256,
                label=found[0].label if found else None,
                confidence=confidence,
                boxes=[asdict(box) for box in found],
                latency_ms=latency_ms,
                image_id=in_pool.get(item.sha256),
                request_id=request_id,
                role="served",
            )
            for item, found, confidence in zip(inputs, detected.boxes, detected.confidences, strict=True)
        )


def _prune(db: Database, project_id: int, days: int) -> None:
    """Delete the project's log rows older than ``days``, at most once a minute per process."""
    now = time.monotonic()
    if now - _pruned_at.get(project_id, -PRUNE_EVERY_SECONDS) < PRUNE_EVERY_SECONDS:
        return
    _pruned_at[project_id] = now
    with db.session() as session:
        session.execute(
            delete(PredictionLog).where(
                PredictionLog.project_id == project_id, PredictionLog.created_at < utcnow() - timedelta(days=days)
            )
        )
