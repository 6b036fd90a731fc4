from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from flywheel.jobs.rows import cancel_job, create_job, get_job, list_jobs
from service.deps import CurrentUser, ReadSessionDep, RuntimeDep, SessionDep
from service.schemas.common import ERROR_RESPONSES, MAX_ID, ProjectId
from service.schemas.jobs import JobCreate, JobRead
from storage.models import JobKind, Role
from storage.projects import get_project, require_role

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=ERROR_RESPONSES)

JobId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.post(
    "/projects/{project_id}/jobs",
    status_code=status.HTTP_201_CREATED,
    summary="Start a job: train, refresh, embed or mine (admin, engineer); a queued training is returned, not doubled",
)
def create(
    project_id: ProjectId, body: JobCreate, session: SessionDep, principal: CurrentUser, runtime: RuntimeDep
) -> JobRead:
    project = get_project(session, principal=principal, project_id=project_id)
    require_role(principal, Role.admin, Role.engineer)
    job = create_job(
        session,
        project_id=project.id,
        kind=JobKind(body.kind.value),
        transport=runtime.transport,
        params={**body.params, "trigger": "manual"},
        created_by=principal.id,
    )
    return JobRead.model_validate(job)


@router.get("/projects/{project_id}/jobs", summary="The project's newest jobs first (admin, engineer)")
def index(project_id: ProjectId, session: ReadSessionDep, principal: CurrentUser) -> list[JobRead]:
    project = get_project(session, principal=principal, project_id=project_id)
    require_role(principal, Role.admin, Role.engineer)
    return [JobRead.model_validate(job) for job in list_jobs(session, project_id=project.id)]


@router.get("/jobs/{job_id}", summary="A job's status, progress, result or error (admin, engineer)")
def read(job_id: JobId, session: ReadSessionDep, principal: CurrentUser) -> JobRead:
    job = get_job(session, job_id=job_id)
    get_project(session, principal=principal, project_id=job.project_id)
    require_role(principal, Role.admin, Role.engineer)
    return JobRead.model_validate(job)


@router.delete("/jobs/{job_id}", summary="Cancel a job: at once if queued, at its next step if running")
def cancel(job_id: JobId, session: SessionDep, principal: CurrentUser) -> JobRead:
    job = get_job(session, job_id=job_id)
    get_project(session, principal=principal, project_id=job.project_id)
    require_role(principal, Role.admin, Role.engineer)
    return JobRead.model_validate(cancel_job(session, job=job))
