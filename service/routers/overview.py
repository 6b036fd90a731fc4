"""Read endpoints behind the console's pages that no other endpoint answers: a project's figures at a glance, the
queue's next images and the learning curve."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from annotation.overview import class_histogram, image_states, labels_per_annotator, labels_per_day, queue_preview
from flywheel.serving.learning_curve import learning_curve
from service.deps import EngineerProject, ReadSessionDep
from service.schemas.common import ERROR_RESPONSES
from service.schemas.overview import CurvePoint, OverviewRead, QueuedImageRead, QueuePreview

router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["console"], responses=ERROR_RESPONSES)


@router.get("/overview", summary="Images by state, class histogram, labels per day and annotator (admin, engineer)")
def overview(project: EngineerProject, session: ReadSessionDep) -> OverviewRead:
    """Images by queue state and split, the current labels per class on train and test, answers per day over the
    last 30 days, and current answers per annotator: a few grouped queries, whatever the project's size."""
    return OverviewRead.model_validate(
        {
            "images": image_states(session, project_id=project.id),
            "classes": class_histogram(session, project=project),
            "days": labels_per_day(session, project_id=project.id),
            "annotators": labels_per_annotator(session, project_id=project.id),
        }
    )


@router.get("/queue", summary="The images the labeling queue serves next, and why (admin, engineer)")
def queue(
    project: EngineerProject,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=200, description="How many of the first images (1 to 200).")] = 20,
) -> QueuePreview:
    """The waiting images in the order `tasks/next` serves them (overlap, then review, then fresh images; within
    each, the mining score), with the reason each waits. Each annotator gets the first they were not served yet."""
    return QueuePreview(
        strategy=project.settings.get("mining", {}).get("strategy", ""),
        items=[
            QueuedImageRead(
                image_id=q.image.id,
                tier=q.tier.name,
                priority=q.image.priority,
                why=q.why,
                label_count=q.image.label_count,
                labels_needed=q.image.labels_needed,
            )
            for q in queue_preview(session, project=project, limit=limit)
        ],
    )


@router.get("/learning-curve", summary="Each trained version's test metric against its labels (admin, engineer)")
def curve(project: EngineerProject, session: ReadSessionDep) -> list[CurvePoint]:
    """Trained versions oldest first: labels behind each, its headline test metric and baseline, the automatic
    promotion decision with its p-value, and every promotion (a promotion by hand of an older model is a rollback)."""
    return [CurvePoint.model_validate(point) for point in learning_curve(session, project_id=project.id)]
