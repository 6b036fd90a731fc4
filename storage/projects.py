"""Projects, their ordered label sets and settings, and who may see them."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import Conflict, Forbidden, InvalidInput, NotFound
from storage.models import Membership, Project, Role, TaskType, User
from storage.users import Principal

MIN_LABELS, MAX_LABELS, MAX_LABEL_LENGTH = 2, 1000, 100
# Explicit ASCII classes, so the API schema (Rust regex) and this module (Python re) agree exactly:
# a label has no control characters and no space at either end; a name has a visible character.
LABEL_PATTERN = r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$"
NAME_PATTERN = r"[^\x00-\x20\x7f]"
ASCII_SPACE = " \t\n\r\x0b\x0c"


class ProjectSettings(BaseModel):
    """Per-project settings; unknown keys are refused so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")

    overlap_rate: float = Field(default=0.1, ge=0.0, le=1.0, description="Share of images labeled by several people.")
    overlap_k: int = Field(default=3, ge=2, le=20, description="Annotators per overlapped image.")
    lease_minutes: int = Field(
        default=10, ge=1, le=1440, description="How long a served task is held for one annotator."
    )
    gold_rate: float = Field(default=0.05, ge=0.0, le=1.0, description="Share of tasks that are gold questions.")
    auto_review: bool = Field(
        default=True, description="Send images whose consensus is weak (a tie, or a low posterior) to more annotators."
    )
    review_posterior: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="A consensus whose Dawid-Skene posterior is below this asks for one more label.",
    )
    review_max_labels: int = Field(
        default=5, ge=1, le=20, description="Automatic review stops asking for labels once an image needs this many."
    )


def validate_labels(labels: list[str]) -> list[str]:
    """Refuse empty, space-padded, duplicate or over-long names, and sets outside 2-1000 labels."""
    cleaned = list(labels)
    problems = []
    if not MIN_LABELS <= len(cleaned) <= MAX_LABELS:
        problems.append(f"a project needs {MIN_LABELS} to {MAX_LABELS} labels, got {len(cleaned)}")
    if any(not re.match(LABEL_PATTERN, label) for label in cleaned):
        problems.append("label names must not be empty, contain control characters, or start or end with spaces")
    if any(len(label) > MAX_LABEL_LENGTH for label in cleaned):
        problems.append(f"label names must have at most {MAX_LABEL_LENGTH} characters")
    duplicates = sorted({label for label in cleaned if cleaned.count(label) > 1})
    if duplicates:
        problems.append(f"label names must be unique; repeated: {', '.join(duplicates[:10])}")
    if problems:
        raise InvalidInput("; ".join(problems), code="invalid_labels")
    return cleaned


def validate_settings(raw: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return ProjectSettings.model_validate(raw or {}).model_dump()
    except ValidationError as exc:
        details = [{"setting": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        summary = "; ".join(f"{d['setting']}: {d['message']}" for d in details)
        raise InvalidInput(f"invalid project settings: {summary}", code="invalid_settings", details=details) from None


def create_project(
    session: Session,
    *,
    name: str,
    labels: list[str],
    settings: dict[str, Any] | None = None,
    task_type: TaskType = TaskType.classification,
) -> Project:
    name = name.strip(ASCII_SPACE)
    if not re.search(NAME_PATTERN, name):
        raise InvalidInput("project name must have a visible character", code="invalid_project_name")
    project = Project(
        name=name, labels=validate_labels(labels), settings=validate_settings(settings), task_type=task_type
    )
    try:
        with session.begin_nested():
            session.add(project)
    except IntegrityError:
        raise Conflict(f"a project named {name!r} already exists", code="project_exists") from None
    return project


def update_settings(session: Session, *, project: Project, changes: dict[str, Any]) -> Project:
    project.settings = validate_settings({**project.settings, **changes})
    session.flush()
    return project


def _not_found(project_id: int) -> NotFound:
    return NotFound(f"project {project_id} not found", code="project_not_found")


def get_project(session: Session, *, principal: Principal, project_id: int) -> Project:
    """The project, if the caller may see it; otherwise NotFound, exactly as if it did not exist."""
    project = session.get(Project, project_id)
    if project is None:
        raise _not_found(project_id)
    if not principal.is_admin and not is_member(session, project_id=project_id, user_id=principal.id):
        raise _not_found(project_id)
    return project


def get_project_by_name(session: Session, *, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"no project named {name!r}", code="project_not_found")
    return project


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise Forbidden(f"this needs the role {allowed}; you are {principal.role.value}", code="forbidden")


def list_projects(session: Session, *, principal: Principal) -> list[Project]:
    query = select(Project).order_by(Project.id)
    if not principal.is_admin:
        query = query.join(Membership, Membership.project_id == Project.id).where(Membership.user_id == principal.id)
    return list(session.scalars(query))


def is_member(session: Session, *, project_id: int, user_id: int) -> bool:
    return session.get(Membership, (project_id, user_id)) is not None


def add_member(session: Session, *, project: Project, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", code="user_not_found")
    if not is_member(session, project_id=project.id, user_id=user_id):
        session.add(Membership(project_id=project.id, user_id=user_id))
        session.flush()
    return user


def remove_member(session: Session, *, project: Project, user_id: int) -> None:
    membership = session.get(Membership, (project.id, user_id))
    if membership is None:
        raise NotFound(f"user {user_id} is not a member of project {project.id}", code="member_not_found")
    session.delete(membership)
    session.flush()


def list_members(session: Session, *, project: Project) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.project_id == project.id)
            .order_by(User.id)
        )
    )
