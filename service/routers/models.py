from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import IO, Annotated

from fastapi import APIRouter, BackgroundTasks, File, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from flywheel.policy import make_champion, start_export
from flywheel.serving.inference import Served, model_version
from flywheel.serving.prediction_log import Detected, input_hashes, predicted_inputs, record_predictions
from flywheel.serving.registry import DownloadFormat, FilesPending, champion, list_models, model_card, model_file
from flywheel.serving.traffic import canary_for, shadows_for
from service.deps import (
    CurrentUser,
    EngineerModel,
    EngineerModelForWrite,
    EngineerProject,
    ReadSessionDep,
    Runtime,
    RuntimeDep,
    SessionDep,
)
from service.schemas.common import ERROR_RESPONSES
from service.schemas.labeling import ScoredBoxRead
from service.schemas.models import ModelCard, ModelRead, PredictionRead, PredictResult, PromoteRequest
from storage.errors import NotFound
from storage.models import ModelKind, ModelVersion, Project, TaskType
from storage.projects import project_settings

router = APIRouter(prefix="/api/v1", tags=["models"], responses=ERROR_RESPONSES)


def _read(model: ModelVersion) -> ModelRead:
    read = ModelRead.model_validate(model)
    read.test_accuracy = (model.metrics or {}).get("test_accuracy")
    return read


class ListedKinds(StrEnum):
    full = "full"
    refresh = "refresh"
    all = "all"


@router.get("/projects/{project_id}/models", summary="The project's model versions, newest first (admin, engineer)")
def index(
    project: EngineerProject,
    session: ReadSessionDep,
    kind: Annotated[
        ListedKinds,
        Query(description="full: trained models (the default); refresh: refreshed heads (many); all."),
    ] = ListedKinds.full,
) -> list[ModelRead]:
    """The project's model versions, newest first, with status and test accuracy: trained models, or with
    ``kind`` the refreshed heads too."""
    kinds = tuple(ModelKind) if kind == ListedKinds.all else (ModelKind(kind.value),)
    return [_read(model) for model in list_models(session, project_id=project.id, kinds=kinds)]


@router.get("/projects/{project_id}/models/champion", summary="The champion's model card (admin, engineer)")
def read_champion(project: EngineerProject, session: ReadSessionDep) -> ModelCard:
    """The model card of the model that serves predictions and pre-labels now; 404 before the first promotion."""
    best = champion(session, project_id=project.id)
    if best is None:
        raise NotFound(f"project {project.id} has no champion model yet", code="no_champion")
    return model_card(session, model=best)


@router.get("/models/{model_id}", summary="A model card: metrics, snapshot, lineage, decision (admin, engineer)")
def read(model: EngineerModel, session: ReadSessionDep) -> ModelCard:
    """Metrics on the test split against the baseline and the champion, the dataset snapshot (id, hash, counts), the
    parent model, the settings, and why it was or was not promoted."""
    return model_card(session, model=model)


@router.get(
    "/models/{model_id}/download",
    summary="Download the ONNX file, the weights (a PyTorch checkpoint) or the card (admin, engineer)",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/json": {}}},
        202: {"description": "A refreshed head's files are being made by the export job named; ask again shortly."},
    },
)
def download(
    model: EngineerModel,
    session: SessionDep,
    runtime: RuntimeDep,
    format: Annotated[DownloadFormat, Query(description="onnx, weights or card.")] = DownloadFormat.onnx,
) -> Response:
    """`onnx` (the exported model, for inference anywhere), `weights` (a PyTorch checkpoint of plain tensors,
    loadable with `weights_only=True`) or `card` (the model card as JSON). A refreshed head's files are made on
    the first request for them: 202 with the export job's id until then."""
    try:
        file = model_file(session, runtime.blobs, model=model, format=format)
    except FilesPending as pending:  # a refreshed head's files are made on the first request for them
        job = start_export(session, model=model, transport=runtime.transport)
        return JSONResponse(
            {"status": "pending", "job_id": job.id, "message": f"{pending.message} (job {job.id})"},
            status_code=202,
            headers={"Retry-After": "5"},
        )
    return Response(
        file.data,
        media_type=file.media_type,
        headers={"Content-Disposition": f'attachment; filename="{file.filename}"'},
    )


@router.post(
    "/models/{model_id}/promote", summary="Make this model the champion; an older one: a rollback (admin, engineer)"
)
def promote_(
    model: EngineerModelForWrite,
    session: SessionDep,
    principal: CurrentUser,
    runtime: RuntimeDep,
    body: PromoteRequest | None = None,
) -> ModelCard:
    """Makes this model the champion, recorded with who and why; promoting an older model is a rollback. Pre-labels
    and `/predict` use it from now on."""
    reason = (body or PromoteRequest()).reason
    promoted = make_champion(session, model=model, by_user=principal.id, reason=reason, transport=runtime.transport)
    return model_card(session, model=promoted)


def _record_after_answer(
    background: BackgroundTasks,
    runtime: Runtime,
    project: Project,
    served: Served | Detected,
    uploads: Sequence[tuple[str, IO[bytes]]],
    hashes: list[str],
    latency_ms: float,
    *,
    shadows: list[int],
) -> None:
    """Log the answers (and capture and shadow-predict, by the project's settings) once the response has gone."""
    settings = project_settings(project).monitoring
    background.add_task(
        record_predictions,
        runtime.db,
        runtime.blobs,
        runtime.limits,
        runtime.predictor,
        project_id=project.id,
        served=served,
        inputs=predicted_inputs(runtime.blobs, settings, uploads, hashes, served, for_shadows=bool(shadows)),
        latency_ms=latency_ms,
        request_id=uuid.uuid4().hex,
        shadows=shadows,
    )


@router.post(
    "/projects/{project_id}/predict",
    summary="Predict labels for one or many images with the serving model (admin, engineer)",
)
def predict(
    project: EngineerProject,
    session: ReadSessionDep,
    runtime: RuntimeDep,
    background: BackgroundTasks,
    files: Annotated[list[UploadFile], File(description="Images; repeat the field for several.")],
) -> PredictResult:
    """Runs the serving model on uploaded images (checked like any upload) and returns each one's label,
    confidence and probability per label, with the model version that answered. When the serving model's files
    are missing or broken an older model answers and says so (`fallback`). After the answer, each prediction is
    logged and, by the project's `monitoring.capture` setting, its image stored into the pool for labeling. In a
    detection project each image gets its boxes with class and score instead, with the same fallback, logged and
    captured the same way (its confidence being its top box's score)."""
    uploads = [(f.filename or "upload", f.file) for f in files]
    hashes = input_hashes(uploads)
    if project.task_type is TaskType.detection:
        started = time.perf_counter()
        detector, found, fallback = runtime.predictor.detect(
            session, project_id=project.id, uploads=uploads, limits=runtime.limits
        )
        detected = Detected(detector, found, fallback=fallback is not None)
        latency_ms = (time.perf_counter() - started) * 1000
        # Detectors have no shadow or canary deployments yet.
        _record_after_answer(background, runtime, project, detected, uploads, hashes, latency_ms, shadows=[])
        return PredictResult(
            model_id=detector.id,
            model_version=model_version(detector),
            fallback=fallback is not None,
            fallback_reason=fallback,
            predictions=[
                PredictionRead(filename=name, boxes=[ScoredBoxRead(**vars(b)) for b in boxes])
                for (name, _), boxes in zip(uploads, found, strict=True)
            ],
        )
    started = time.perf_counter()
    served = runtime.predictor.predict(
        session,
        project_id=project.id,
        uploads=uploads,
        limits=runtime.limits,
        first=canary_for(session, project_id=project.id, hashes=hashes),
    )
    latency_ms = (time.perf_counter() - started) * 1000
    shadows = shadows_for(session, project_id=project.id, answered_by=served.model)
    _record_after_answer(background, runtime, project, served, uploads, hashes, latency_ms, shadows=shadows)
    return PredictResult(
        model_id=served.model.id,
        model_version=model_version(served.model),
        fallback=served.fallback is not None,
        fallback_reason=served.fallback,
        predictions=[
            PredictionRead(filename=name, label=a.label, confidence=a.confidence, probabilities=a.probabilities)
            for (name, _), a in zip(uploads, served.answers, strict=True)
        ],
    )
