from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from flywheel.monitoring.deployments import compare_deployed
from flywheel.monitoring.volume import predictions_per_day
from flywheel.serving.registry import Deployment, deploy
from service.deps import EngineerModelForWrite, EngineerProject, ReadSessionDep, SessionDep
from service.schemas.common import ERROR_RESPONSES
from service.schemas.models import ModelRead
from service.schemas.monitoring import (
    DeploymentRead,
    DeploymentSet,
    DriftedInput,
    DriftPointRead,
    DriftRead,
    PredictionDayRead,
)
from storage.models import DriftPoint

router = APIRouter(prefix="/api/v1", tags=["monitoring"], responses=ERROR_RESPONSES)


@router.get("/projects/{project_id}/drift", summary="The drift series and the most drifted inputs (admin, engineer)")
def drift(
    project: EngineerProject,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="The newest this many points.")] = 100,
) -> DriftRead:
    """Each `drift` job compares a window of logged predictions with the champion's training images and adds a
    point; `most_drifted` lists the newest point's inputs the domain classifier finds least like the training
    images, with thumbnails where the image was captured (`monitoring.capture`)."""
    points = list(
        session.scalars(
            select(DriftPoint).where(DriftPoint.project_id == project.id).order_by(DriftPoint.id.desc()).limit(limit)
        )
    )[::-1]
    newest = points[-1].most_drifted if points else []
    return DriftRead(
        points=[DriftPointRead.model_validate(p) for p in points],
        most_drifted=[
            DriftedInput(
                **item,
                thumbnail_url=f"/api/v1/images/{item['image_id']}/thumbnail" if item["image_id"] is not None else None,
            )
            for item in newest
        ],
    )


@router.put(
    "/models/{model_id}/deployment", summary="Put a model in shadow or canary, or take it out (admin, engineer)"
)
def set_deployment(model: EngineerModelForWrite, body: DeploymentSet, session: SessionDep) -> ModelRead:
    """A shadow predicts on a copy of every `/predict` request after the answer (logged, never returned); a canary
    answers `share` of the requests (chosen by the first image's hash), the serving model predicting beside it.
    One canary per project; promoting the model (`POST /models/{id}/promote`) ends either role."""
    mode = Deployment(body.mode) if body.mode is not None else None
    return ModelRead.model_validate(deploy(session, model=model, mode=mode, share=body.share))


@router.get(
    "/projects/{project_id}/deployments",
    summary="Shadow and canary models against the serving model on the same traffic (admin, engineer)",
)
def deployments(project: EngineerProject, session: ReadSessionDep) -> list[DeploymentRead]:
    """Per model in deployment, over the logged requests both it and the serving side answered: agreement, median
    model time, and, on captured images labeled since, each one's accuracy with McNemar's test (the promotion's)."""
    return [DeploymentRead.model_validate(entry) for entry in compare_deployed(session, project_id=project.id)]


@router.get(
    "/projects/{project_id}/predictions/per-day",
    summary="Logged /predict answers per UTC day: sent, fallbacks, shadow (admin, engineer)",
)
def per_day(
    project: EngineerProject,
    session: ReadSessionDep,
    days: Annotated[int, Query(ge=1, le=366, description="How many days back, today included.")] = 30,
) -> list[PredictionDayRead]:
    """From the prediction log (kept `monitoring.log_days`): the days with answers, oldest first."""
    return [PredictionDayRead.model_validate(d) for d in predictions_per_day(session, project_id=project.id, days=days)]
