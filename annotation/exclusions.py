"""Leaving an annotator's labels out of consensus: an admin's recorded, reversible decision.

Removing someone from a project keeps their labels in history and in consensus; only an exclusion
takes them out, and revoking it puts them back. Each decision is a row with who and when.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation.consensus import ConsensusSummary, update_project_consensus
from annotation.quality_reports import patch_exclusion
from annotation.scorecards import Exclusion
from storage.errors import Conflict, NotFound
from storage.models import AnnotatorExclusion, Project, User, utcnow
from storage.projects import take_turns_on_project
from storage.users import Principal


def _active(session: Session, *, project_id: int, annotator_id: int) -> AnnotatorExclusion | None:
    return session.scalar(
        select(AnnotatorExclusion).where(
            AnnotatorExclusion.project_id == project_id,
            AnnotatorExclusion.annotator_id == annotator_id,
            AnnotatorExclusion.revoked_at.is_(None),
        )
    )


def exclude_annotator(
    session: Session, *, project: Project, annotator_id: int, reason: str, by: Principal
) -> tuple[AnnotatorExclusion, ConsensusSummary]:
    """Record the exclusion and recompute the project's consensus without the annotator's labels.

    Any user may be excluded, before or after labeling, member or not: the decision is about labels."""
    if session.get(User, annotator_id) is None:
        raise NotFound(f"user {annotator_id} not found", code="user_not_found")
    # Exclusions of one project take turns, so there are never two active rows.
    take_turns_on_project(session, project_id=project.id)
    if _active(session, project_id=project.id, annotator_id=annotator_id) is not None:
        raise Conflict(f"user {annotator_id} is already excluded from project {project.id}", code="already_excluded")
    exclusion = AnnotatorExclusion(
        project_id=project.id, annotator_id=annotator_id, reason=reason, excluded_by_id=by.id, created_at=utcnow()
    )
    session.add(exclusion)
    session.flush()
    shown = Exclusion(reason=reason, excluded_by_id=by.id, excluded_at=exclusion.created_at)
    summary = update_project_consensus(session, project.id)  # the images' locks first, as gold and refits take them
    patch_exclusion(session, project_id=project.id, annotator_id=annotator_id, exclusion=shown)
    return exclusion, summary


def revoke_exclusion(
    session: Session, *, project: Project, annotator_id: int, by: Principal
) -> tuple[AnnotatorExclusion, ConsensusSummary]:
    """Put the annotator's labels back into consensus; the exclusion stays in the record, revoked."""
    take_turns_on_project(session, project_id=project.id)
    exclusion = _active(session, project_id=project.id, annotator_id=annotator_id)
    if exclusion is None:
        raise Conflict(f"user {annotator_id} is not excluded from project {project.id}", code="not_excluded")
    exclusion.revoked_at, exclusion.revoked_by_id = utcnow(), by.id
    session.flush()
    summary = update_project_consensus(session, project.id)
    patch_exclusion(session, project_id=project.id, annotator_id=annotator_id, exclusion=None)
    return exclusion, summary


def list_exclusions(session: Session, *, project_id: int) -> list[AnnotatorExclusion]:
    """Every exclusion of the project, revoked ones included, oldest first."""
    query = select(AnnotatorExclusion).where(AnnotatorExclusion.project_id == project_id)
    return list(session.scalars(query.order_by(AnnotatorExclusion.id)))
