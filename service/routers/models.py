from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from flywheel.policy import make_champion
from flywheel.serving.inference import model_version
from flywheel.serving.registry import champion, get_model, list_models, model_card, newer_refresh
from service.deps import CurrentUser, ReadSessionDep, RuntimeDep, SessionDep
from service.schemas.common import ERROR_RESPONSES, MAX_ID, ProjectId
from service.schemas.models import (
    DownloadFormat,
    ModelCard,
    ModelRead,
    PredictionRead,
    PredictResult,
    PromoteRequest,
)
from storage.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from storage.imagecheck import ImageRejected, decode_image
from storage.models import ModelStatus, ModelVersion, Role
from storage.projects import get_project, require_role
from storage.users import Principal

router = APIRouter(prefix="/api/v1", tags=["models"], responses=ERROR_RESPONSES)

ModelId = Annotated[int, Path(ge=1, le=MAX_ID)]
ENGINEERS = (Role.admin, Role.engineer)


def _read(model: ModelVersion) -> ModelRead:
    read = ModelRead.model_validate(model)
    read.test_accuracy = (model.metrics or {}).get("test_accuracy")
    return read


@router.get("/projects/{project_id}/models", summary="The project's model versions, newest first (admin, engineer)")
def index(project_id: ProjectId, session: ReadSessionDep, principal: CurrentUser) -> list[ModelRead]:
    project = get_project(session, principal=principal, project_id=project_id)
    require_role(principal, *ENGINEERS)
    return [_read(model) for model in list_models(session, project_id=project.id)]


@router.get("/projects/{project_id}/models/champion", summary="The champion's model card (admin, engineer)")
def read_champion(project_id: ProjectId, session: ReadSessionDep, principal: CurrentUser) -> ModelCard:
    project = get_project(session, principal=principal, project_id=project_id)
    require_role(principal, *ENGINEERS)
    best = champion(session, project_id=project.id)
    if best is None:
        raise NotFound(f"project {project.id} has no champion model yet", code="no_champion")
    return model_card(session, model=best)


@router.get("/models/{model_id}", summary="A model card: metrics, snapshot, lineage, decision (admin, engineer)")
def read(model_id: ModelId, session: ReadSessionDep, principal: CurrentUser) -> ModelCard:
    model = _visible_model(session, principal, model_id)
    return model_card(session, model=model)


@router.get(
    "/models/{model_id}/download",
    summary="Download the ONNX file, the weights (a PyTorch checkpoint) or the card (admin, engineer)",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}, "application/json": {}}}},
)
def download(
    model_id: ModelId,
    session: ReadSessionDep,
    principal: CurrentUser,
    runtime: RuntimeDep,
    format: Annotated[DownloadFormat, Query(description="onnx, weights or card.")] = DownloadFormat.onnx,
) -> Response:
    model = _visible_model(session, principal, model_id)
    if model.status in (ModelStatus.training, ModelStatus.failed):
        raise Conflict(f"model {model.id} is {model.status.value}; nothing to download", code="model_not_ready")
    name = f"labelwheel-project{model.project_id}-model{model.id}"
    if format == DownloadFormat.card:
        return JSONResponse(
            model_card(session, model=model), headers={"Content-Disposition": f'attachment; filename="{name}.json"'}
        )
    sha256 = model.onnx_sha256 if format == DownloadFormat.onnx else model.weights_sha256
    if sha256 is None:
        newer = newer_refresh(session, model=model)
        if newer is not None:
            raise Conflict(
                f"model {model.id} was replaced by the refreshed model {newer.id} before its files were made; "
                "download that one",
                code="model_superseded",
            )
        raise Conflict(f"the {format.value} file of model {model.id} is still being made; try again shortly")
    data = runtime.blobs.read_bytes(sha256)
    suffix = "onnx" if format == DownloadFormat.onnx else "pt"
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}.{suffix}"'},
    )


@router.post(
    "/models/{model_id}/promote", summary="Make this model the champion; an older one: a rollback (admin, engineer)"
)
def promote_(
    model_id: ModelId,
    session: SessionDep,
    principal: CurrentUser,
    runtime: RuntimeDep,
    body: PromoteRequest | None = None,
) -> ModelCard:
    model = _visible_model(session, principal, model_id)
    reason = (body or PromoteRequest()).reason
    promoted = make_champion(session, model=model, by_user=principal.id, reason=reason, transport=runtime.transport)
    return model_card(session, model=promoted)


@router.post(
    "/projects/{project_id}/predict",
    summary="Predict labels for one or many images with the serving model (admin, engineer)",
)
def predict(
    project_id: ProjectId,
    session: ReadSessionDep,
    principal: CurrentUser,
    runtime: RuntimeDep,
    files: Annotated[list[UploadFile], File(description="Images; repeat the field for several.")],
) -> PredictResult:
    get_project(session, principal=principal, project_id=project_id)
    require_role(principal, *ENGINEERS)
    settings = runtime.settings
    if len(files) > settings.max_files_per_request:
        raise PayloadTooLarge(f"at most {settings.max_files_per_request} images per request")
    images = []
    for upload in files:
        if (upload.size or 0) > settings.max_file_bytes:
            raise PayloadTooLarge(f"{upload.filename}: over the limit of {settings.max_file_bytes:,} bytes")
        try:
            images.append(decode_image(upload.file, max_pixels=settings.max_image_pixels))
        except ImageRejected as exc:
            raise InvalidInput(f"{upload.filename}: {exc}", code="invalid_image") from None
    result = runtime.predictor.predict(session, project_id=project_id, images=images)
    if result is None:
        raise Conflict(
            f"project {project_id} has no model yet: once enough images are labeled a training starts by itself",
            code="no_model",
        )
    model, answers = result
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


def _visible_model(session: Session, principal: Principal, model_id: int) -> ModelVersion:
    """The model, if the caller is an engineer of its project; 404 exactly as if it did not exist otherwise."""
    model = get_model(session, model_id=model_id)
    get_project(session, principal=principal, project_id=model.project_id)
    require_role(principal, *ENGINEERS)
    return model
