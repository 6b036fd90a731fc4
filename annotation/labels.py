"""Reading the current labels: what training, exports and engineers see."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Image, Project, TaskType


def current_labels(session: Session, *, project: Project, after: int | None, limit: int) -> list[Image]:
    """Images that have a current label (boxes in a detection project), by id (keyset pagination)."""
    current = Image.consensus_boxes if project.task_type is TaskType.detection else Image.consensus_label
    query = select(Image).where(Image.project_id == project.id, current.is_not(None))
    if after is not None:
        query = query.where(Image.id > after)
    return list(session.scalars(query.order_by(Image.id).limit(limit)))
