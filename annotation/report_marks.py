"""Marking the stored quality reports outdated: what every change they read other than a new label does (a gold
answer, an exclusion, a consensus refit, a withdrawn label). A module of its own because consensus refits mark them,
and the reports' own module reads consensus."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from storage.models import QualityReport, utcnow


def mark_reports_outdated(session: Session, *, project_id: int) -> None:
    session.execute(update(QualityReport).where(QualityReport.project_id == project_id).values(outdated_at=utcnow()))
