from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from service.deps import EngineerProject, ReadSessionDep
from service.schemas.common import ERROR_RESPONSES
from service.schemas.monitoring import DriftedInput, DriftPointRead, DriftRead
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
