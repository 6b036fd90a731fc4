"""Leaving an annotator's labels out of consensus: an admin's recorded, reversible decision.

Removing someone from a project keeps their labels in history and in consensus; only an exclusion
takes them out, and revoking it puts them back. Each decision is a row with who and when.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import Conflict, NotFound
from storage.models import Annotation, AnnotatorExclusion, Project, User, utcnow
from storage.users import Principal


def excluded_annotators(session: Session, *, project_id: int) -> set[int]:
    return set(
        session.scalars(
            select(AnnotatorExclusion.annotator_id).where(
                AnnotatorExclusion.project_id == project_id, AnnotatorExclusion.revoked_at.is_(None)
            )
        )
    )


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
) -> AnnotatorExclusion:
    """Record the exclusion. The caller recomputes consensus (see ``consensus.update_project_consensus``)."""
    if session.get(User, annotator_id) is None:
        raise NotFound(f"user {annotator_id} not found", code="user_not_found")
    labeled = session.scalar(
        select(Annotation.id)
        .where(Annotation.project_id == project.id, Annotation.annotator_id == annotator_id)
        .limit(1)
    )
    if labeled is None:
        raise NotFound(f"user {annotator_id} has no labels in project {project.id}", code="annotator_not_found")
    # Locking the project row serializes exclusions of one project, so there is never two active rows.
    session.scalar(select(Project.id).where(Project.id == project.id).with_for_update())
    if _active(session, project_id=project.id, annotator_id=annotator_id) is not None:
        raise Conflict(f"user {annotator_id} is already excluded from project {project.id}", code="already_excluded")
    exclusion = AnnotatorExclusion(
        project_id=project.id, annotator_id=annotator_id, reason=reason, excluded_by_id=by.id, created_at=utcnow()
    )
    session.add(exclusion)
    session.flush()
    return exclusion


def revoke_exclusion(session: Session, *, project: Project, annotator_id: int, by: Principal) -> AnnotatorExclusion:
    """Put the annotator's labels back into consensus; the exclusion stays in the record, revoked."""
    session.scalar(select(Project.id).where(Project.id == project.id).with_for_update())
    exclusion = _active(session, project_id=project.id, annotator_id=annotator_id)
    if exclusion is None:
        raise NotFound(f"user {annotator_id} is not excluded from project {project.id}", code="not_excluded")
    exclusion.revoked_at, exclusion.revoked_by_id = utcnow(), by.id
    session.flush()
    return exclusion


def list_exclusions(session: Session, *, project_id: int) -> list[AnnotatorExclusion]:
    """Every exclusion of the project, revoked ones included, oldest first."""
    query = select(AnnotatorExclusion).where(AnnotatorExclusion.project_id == project_id)
    return list(session.scalars(query.order_by(AnnotatorExclusion.id)))
