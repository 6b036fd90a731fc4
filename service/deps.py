"""Typed FastAPI dependencies: the runtime, a request session, the calling user, and what they may reach."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from flywheel.jobs.rows import get_job
from flywheel.jobs.transport import Transport
from flywheel.policy import LabelNotifier
from flywheel.serving.inference import Predictor
from flywheel.serving.registry import get_model
from flywheel.training.snapshots import get_snapshot
from service.schemas.common import ImageId, JobId, ModelId, ProjectId, SnapshotId
from storage.blobs import BlobStore
from storage.db import Database
from storage.images import get_image
from storage.ingest import Limits
from storage.models import DatasetSnapshot, Image, Job, ModelVersion, Project, Role
from storage.projects import get_project, require_role
from storage.settings import Settings
from storage.users import Principal, authenticate


@dataclass
class Runtime:
    """What the app holds for its lifetime: settings, stores, the job transport and the model predictor."""

    settings: Settings
    db: Database
    blobs: BlobStore
    transport: Transport
    notifier: LabelNotifier
    predictor: Predictor

    @property
    def limits(self) -> Limits:
        return Limits.from_settings(self.settings)


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain def dependency in its thread pool, a hop that every request would pay for this.
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """A session whose transaction commits before the response is sent: a 2xx means it is stored."""
    with runtime.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_read_session(runtime: RuntimeDep) -> Iterator[Session]:
    """For routes that only read: on SQLite it neither takes nor waits for the write lock."""
    with runtime.db.read_session() as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]

_DESCRIPTION = "An API token from `labelwheel users create`."
_bearer = HTTPBearer(auto_error=False, description=_DESCRIPTION)


def get_principal(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    # A short read-only session of its own, so a long request (an upload) holds no transaction while it works.
    with runtime.db.read_session() as session:
        return authenticate(session, token=credentials.credentials if credentials else None)


CurrentUser = Annotated[Principal, Depends(get_principal)]


class _UncheckedToken(HTTPBearer):
    """The bearer scheme answering the token itself: one dependency, not two, on the routes every label calls.

    async: no thread-pool hop. The labeling routes check it in their own transaction, with the membership and the
    project in the same statement (``storage.projects.authenticate_member``): one statement per request for access.
    """

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        credentials = await super().__call__(request)
        return credentials.credentials if credentials else None


BearerToken = Annotated[
    str | None, Depends(_UncheckedToken(auto_error=False, scheme_name=_bearer.scheme_name, description=_DESCRIPTION))
]
"""The caller's token, unchecked: for routes that check it with ``authenticate_member`` in their own transaction."""


def admin_user(principal: CurrentUser) -> Principal:
    require_role(principal, Role.admin)
    return principal


AdminUser = Annotated[Principal, Depends(admin_user)]
"""The caller, refused with 403 unless an admin: for routes outside any project (users, new projects)."""

# Project-scoped access. Each dependency resolves the path's id, answers 404 to a non-member exactly as for a
# missing project, then 403 to a member without the role. Two kinds, by the session the route works in:
# - ``MemberProject`` and the like check in a short read session of their own (as ``CurrentUser`` does), so a long
#   request such as an upload holds no transaction; the object is a detached snapshot, for reading.
# - ``...ForWrite`` check in the route's own write session (``SessionDep``), under its write lock, so the route
#   can change the object and the check and the change happen in one transaction.
ENGINEERS = (Role.admin, Role.engineer)
EVERYONE = tuple(Role)


def _project(session: Session, principal: Principal, project_id: int, roles: tuple[Role, ...]) -> Project:
    project = get_project(session, principal=principal, project_id=project_id)
    require_role(principal, *roles)
    return project


def _model(session: Session, principal: Principal, model_id: int) -> ModelVersion:
    model = get_model(session, model_id=model_id)
    _project(session, principal, model.project_id, ENGINEERS)
    return model


def _job(session: Session, principal: Principal, job_id: int) -> Job:
    job = get_job(session, job_id=job_id)
    _project(session, principal, job.project_id, ENGINEERS)
    return job


def _project_access(*roles: Role) -> tuple[Callable[..., Project], Callable[..., Project]]:
    """A read and a write dependency for the path's project, open to ``roles``."""

    def read(project_id: ProjectId, principal: CurrentUser, runtime: RuntimeDep) -> Project:
        with runtime.db.read_session() as session:
            return _project(session, principal, project_id, roles)

    def write(project_id: ProjectId, principal: CurrentUser, session: SessionDep) -> Project:
        return _project(session, principal, project_id, roles)

    return read, write


member_project, member_project_for_write = _project_access(*EVERYONE)
engineer_project, engineer_project_for_write = _project_access(*ENGINEERS)
admin_project, admin_project_for_write = _project_access(Role.admin)

MemberProject = Annotated[Project, Depends(member_project)]
MemberProjectForWrite = Annotated[Project, Depends(member_project_for_write)]
EngineerProject = Annotated[Project, Depends(engineer_project)]
EngineerProjectForWrite = Annotated[Project, Depends(engineer_project_for_write)]
AdminProject = Annotated[Project, Depends(admin_project)]
AdminProjectForWrite = Annotated[Project, Depends(admin_project_for_write)]


def engineer_model(model_id: ModelId, principal: CurrentUser, runtime: RuntimeDep) -> ModelVersion:
    with runtime.db.read_session() as session:
        return _model(session, principal, model_id)


def engineer_model_for_write(model_id: ModelId, principal: CurrentUser, session: SessionDep) -> ModelVersion:
    return _model(session, principal, model_id)


EngineerModel = Annotated[ModelVersion, Depends(engineer_model)]
EngineerModelForWrite = Annotated[ModelVersion, Depends(engineer_model_for_write)]


def engineer_job(job_id: JobId, principal: CurrentUser, runtime: RuntimeDep) -> Job:
    with runtime.db.read_session() as session:
        return _job(session, principal, job_id)


def engineer_job_for_write(job_id: JobId, principal: CurrentUser, session: SessionDep) -> Job:
    return _job(session, principal, job_id)


EngineerJob = Annotated[Job, Depends(engineer_job)]
EngineerJobForWrite = Annotated[Job, Depends(engineer_job_for_write)]


def engineer_snapshot(snapshot_id: SnapshotId, principal: CurrentUser, runtime: RuntimeDep) -> DatasetSnapshot:
    with runtime.db.read_session() as session:
        snapshot = get_snapshot(session, snapshot_id=snapshot_id)
        _project(session, principal, snapshot.project_id, ENGINEERS)
        return snapshot


EngineerSnapshot = Annotated[DatasetSnapshot, Depends(engineer_snapshot)]


def member_image(image_id: ImageId, principal: CurrentUser, runtime: RuntimeDep) -> Image:
    """The image, if the caller is a member of its project; 404 ``image_not_found`` otherwise."""
    with runtime.db.read_session() as session:
        return get_image(session, principal=principal, image_id=image_id)


MemberImage = Annotated[Image, Depends(member_image)]
