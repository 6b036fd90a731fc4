from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from flywheel.policy import make_champion, start_export
from flywheel.serving.inference import model_version
from flywheel.serving.registry import DownloadFormat, FilesPending, champion, list_models, model_card, model_file
from service.deps import (
    CurrentUser,
    EngineerModel,
    EngineerModelForWrite,
    EngineerProject,
    ReadSessionDep,
    RuntimeDep,
    SessionDep,
)
from service.schemas.common import ERROR_RESPONSES
from service.schemas.models import ModelCard, ModelRead, PredictionRead, PredictResult, PromoteRequest
from storage.errors import NotFound
from storage.models import ModelKind, ModelVersion

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


@router.post(
    "/projects/{project_id}/predict",
    summary="Predict labels for one or many images with the serving model (admin, engineer)",
)
def predict(
    project: EngineerProject,
    session: ReadSessionDep,
    runtime: RuntimeDep,
    files: Annotated[list[UploadFile], File(description="Images; repeat the field for several.")],
) -> PredictResult:
    """Runs the serving model on uploaded images (checked like any upload, not stored) and returns each one's
    label, confidence and probability per label, with the model version that answered."""
    uploads = [(f.filename or "upload", f.file) for f in files]
    model, answers = runtime.predictor.predict(session, project_id=project.id, uploads=uploads, limits=runtime.limits)
    return PredictResult(
        model_id=model.id,
        model_version=model_version(model),
        predictions=[
            PredictionRead(
                filename=upload.filename or "", label=a.label, confidence=a.confidence, probabilities=a.probabilities
            )
            for upload, a in zip(files, answers, strict=True)
        ],
    )
