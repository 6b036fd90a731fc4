from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from annotation.queue import add_to_team, remove_from_team
from service.deps import AdminProjectForWrite, AdminUser, CurrentUser, MemberProject, ReadSessionDep, SessionDep
from service.schemas.common import ERROR_RESPONSES, UserId
from service.schemas.projects import MemberAdd, ProjectCreate, ProjectRead, ProjectSettingsUpdate
from service.schemas.users import UserRead
from storage.projects import create_project, list_members, list_projects, update_settings

router = APIRouter(prefix="/api/v1/projects", tags=["projects"], responses=ERROR_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a project (admin)")
def create(body: ProjectCreate, session: SessionDep, _: AdminUser) -> ProjectRead:
    """Creates a project with its ordered label set and settings (overlap, gold questions, review, hotkeys, training
    and mining policy; unknown settings are refused). The label order is the order of the labeling page's buttons
    and breaks ties in majority votes."""
    project = create_project(
        session, name=body.name, labels=body.labels, settings=body.settings.model_dump(), task_type=body.task_type
    )
    return ProjectRead.model_validate(project)


@router.get("", summary="Projects the caller is a member of (admins: all)")
def index(session: ReadSessionDep, principal: CurrentUser) -> list[ProjectRead]:
    """The projects the caller may see: admins see all, others the projects they are members of."""
    return [ProjectRead.model_validate(p) for p in list_projects(session, principal=principal)]


@router.get("/{project_id}", summary="One project")
def read(project: MemberProject) -> ProjectRead:
    """The project's ordered labels and its settings. A project you are not a member of answers 404."""
    return ProjectRead.model_validate(project)


@router.patch("/{project_id}/settings", summary="Change some settings (admin)")
def patch_settings(project: AdminProjectForWrite, body: ProjectSettingsUpdate, session: SessionDep) -> ProjectRead:
    """Changes only the settings named in the body, group by group (changing one training key keeps the others). The
    answer holds every setting. `overlap_rate` applies to images stored afterwards."""
    return ProjectRead.model_validate(
        update_settings(session, project=project, changes=_given(body.settings.model_dump(exclude_unset=True)))
    )


@router.get("/{project_id}/members", summary="Members of the project")
def members(project: MemberProject, session: ReadSessionDep) -> list[UserRead]:
    """The users who may see and label the project. Its annotator members bound the labels an image waits for: an
    image never waits for more distinct annotators than there are."""
    return [UserRead.model_validate(u) for u in list_members(session, project=project)]


@router.post("/{project_id}/members", status_code=status.HTTP_201_CREATED, summary="Add a member (admin)")
def add(project: AdminProjectForWrite, body: MemberAdd, session: SessionDep) -> UserRead:
    """Makes a user a member of the project (adding one who is already a member changes nothing). Images whose
    overlap a larger team can now give come back to the queue."""
    (user,) = add_to_team(session, project=project, user_ids=[body.user_id])
    return UserRead.model_validate(user)


@router.delete(
    "/{project_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a member (admin)"
)
def remove(project: AdminProjectForWrite, user_id: UserId, session: SessionDep) -> None:
    """Takes a user's access to the project away; their labels stay. Images that now have every label the remaining
    annotators can give leave the queue."""
    remove_from_team(session, project=project, user_id=user_id)


def _given(changes: dict[str, Any]) -> dict[str, Any]:
    """A top-level null means "leave as is"; inside a group, null is a value (it clears an optional key)."""
    return {name: value for name, value in changes.items() if value is not None}
