from __future__ import annotations

from fastapi import APIRouter, status

from flywheel.jobs.rows import cancel_job, create_job, list_jobs
from service.deps import (
    CurrentUser,
    EngineerJob,
    EngineerJobForWrite,
    EngineerProject,
    EngineerProjectForWrite,
    ReadSessionDep,
    RuntimeDep,
    SessionDep,
)
from service.schemas.common import ERROR_RESPONSES
from service.schemas.jobs import JobCreate, JobRead
from storage.models import JobKind

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=ERROR_RESPONSES)


@router.post(
    "/projects/{project_id}/jobs",
    status_code=status.HTTP_201_CREATED,
    summary="Start a job: train, refresh, embed, label_quality or mine (admin, engineer); a queued training is "
    "returned, not doubled",
)
def create(
    project: EngineerProjectForWrite, body: JobCreate, session: SessionDep, principal: CurrentUser, runtime: RuntimeDep
) -> JobRead:
    """Queues a background job (`train`, `refresh`, `embed`, `label_quality` or `mine`) for the worker. A training
    asked for while another one is queued for the project returns that one instead of a second."""
    job = create_job(
        session,
        project_id=project.id,
        kind=JobKind(body.kind),
        transport=runtime.transport,
        params={**body.params.model_dump(exclude_unset=True), "trigger": "manual"},
        created_by=principal.id,
    )
    return JobRead.model_validate(job)


@router.get("/projects/{project_id}/jobs", summary="The project's newest jobs first (admin, engineer)")
def index(project: EngineerProject, session: ReadSessionDep) -> list[JobRead]:
    """The project's jobs, newest first, with status and progress."""
    return [JobRead.model_validate(job) for job in list_jobs(session, project_id=project.id)]


@router.get("/jobs/{job_id}", summary="A job's status, progress, result or error (admin, engineer)")
def read(job: EngineerJob) -> JobRead:
    """Status (`queued`, `running`, `succeeded`, `failed`, `cancelled`), progress 0..1, message, params, result,
    error with traceback, attempts and heartbeat."""
    return JobRead.model_validate(job)


@router.delete("/jobs/{job_id}", summary="Cancel a job: at once if queued, at its next step if running")
def cancel(job: EngineerJobForWrite, session: SessionDep) -> JobRead:
    """A queued job is cancelled at once; a running one stops at its next progress step. Cancelling a finished job
    is a 409."""
    return JobRead.model_validate(cancel_job(session, job=job))
