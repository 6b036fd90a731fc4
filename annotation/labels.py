"""Reading the current labels: what training, exports and engineers see."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Image


def current_labels(session: Session, *, project_id: int, after: int | None, limit: int) -> list[Image]:
    """Images that have a current label, by id (keyset pagination over the project's images)."""
    query = select(Image).where(Image.project_id == project_id, Image.consensus_label.is_not(None))
    if after is not None:
        query = query.where(Image.id > after)
    return list(session.scalars(query.order_by(Image.id).limit(limit)))
