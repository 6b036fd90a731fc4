"""Job rows: creating, claiming, heartbeats, progress, cancellation, and recovery when a worker dies.

A job is a row first, so its status and progress are visible through the API whatever runs it. A
worker claims a job with a conditional update (two workers never run the same one), records a
heartbeat while it works, and finishes it only if it still holds it. A worker that dies mid-job
leaves a ``running`` row whose heartbeat stops: the reaper puts it back in the queue.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from flywheel.jobs.transport import Transport
from storage.db import Database, after_commit
from storage.errors import Conflict, InvalidInput, NotFound
from storage.models import Image, Job, JobKind, JobStatus, Project, TaskType, utcnow
from storage.projects import take_turns_on_project

logger = logging.getLogger(__name__)

TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


DETECTION_JOBS = frozenset(
    {JobKind.train, JobKind.refresh, JobKind.mine, JobKind.label_quality, JobKind.quality_report}
)


def require_job_for_task(project: Project, *, kind: JobKind) -> None:
    """Detection projects train detectors, refresh them, mine with them, find box label issues and report quality;
    the other job kinds (embeddings, distillation...) work on classifiers only so far."""
    if project.task_type is TaskType.detection and kind not in DETECTION_JOBS:
        raise InvalidInput(
            f"no {kind.value} job for project {project.id}: it is a detection project, where the flywheel trains "
            "detectors (kind train), refreshes them (kind refresh), mines with them (kind mine), finds box label "
            f"issues (kind label_quality) and reports quality (kind quality_report); {kind.value} works on "
            "classification projects only for now",
            code="not_for_detection",
        )


# Parameters that only one task type's version of a job reads: given to the other, they would be silently ignored.
_TASK_PARAMS: dict[JobKind, dict[str, TaskType]] = {
    JobKind.label_quality: {"filter_by": TaskType.classification, "score_below": TaskType.detection}
}


def _require_params_for_task(project: Project, *, kind: JobKind, params: dict[str, Any]) -> None:
    for name, task in _TASK_PARAMS.get(kind, {}).items():
        if name in params and project.task_type is not task:
            raise InvalidInput(
                f"{kind.value} parameter {name!r} applies to {task.value} projects only; project {project.id} is a "
                f"{project.task_type.value} project: leave it out",
                code="param_not_for_task",
            )


def create_job(
    session: Session,
    *,
    project_id: int,
    kind: JobKind,
    transport: Transport,
    params: dict[str, Any] | None = None,
    created_by: int | None = None,
    delay_seconds: float = 0.0,
    enqueue: bool = True,
) -> Job:
    """Store a queued job and enqueue it once the transaction commits (with ``enqueue=False``, the caller runs
    it itself, as ``labelwheel mine`` does; should that process die, a worker's recovery picks the job up).

    A ``train`` request while another training of the project is still queued returns that job:
    labels arriving during a training schedule one follow-up, not one per label.
    """
    project = session.get_one(Project, project_id)
    require_job_for_task(project, kind=kind)
    _require_params_for_task(project, kind=kind, params=params or {})
    if kind == JobKind.train:
        take_turns_on_project(session, project_id=project_id)
        waiting = session.scalars(
            select(Job)
            .where(Job.project_id == project_id, Job.kind == JobKind.train, Job.status == JobStatus.queued)
            .order_by(Job.id)
            .limit(1)
        ).first()
        if waiting is not None:
            return waiting
        # What the retraining policy counts growth from, whoever asked for this training.
        labeled = session.scalar(
            select(func.count()).where(Image.project_id == project_id, Image.consensus_label.is_not(None))
        )
        params = {**(params or {}), "labeled": labeled}
    job = Job(project_id=project_id, kind=kind, params=params or {}, created_by=created_by, message="queued")
    session.add(job)
    session.flush()
    job_id = job.id
    if enqueue:
        after_commit(session, lambda: transport.enqueue_job(job_id, kind, delay_seconds=delay_seconds))
    return job


def get_job(session: Session, *, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return job


def list_jobs(session: Session, *, project_id: int, limit: int = 100) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.project_id == project_id).order_by(Job.id.desc()).limit(limit)))


def cancel_job(session: Session, *, job: Job) -> Job:
    """A queued job is cancelled at once; a running one stops at its next progress report."""
    if job.status in TERMINAL:
        raise Conflict(f"job {job.id} has already {job.status.value}", code="job_finished")
    job.cancel_requested = True
    if job.status == JobStatus.queued:
        job.status, job.finished_at, job.message = JobStatus.cancelled, utcnow(), "cancelled before it started"
    else:
        job.message = "cancelling"
    session.flush()
    return job


@dataclass(frozen=True)
class Claim:
    job_id: int
    project_id: int
    kind: JobKind
    params: dict[str, Any]
    attempt: int


def claim_job(db: Database, *, job_id: int, worker: str) -> Claim | None:
    """Mark a queued job running for ``worker``; None when it is gone, taken, or must wait.

    At most one training per project runs at a time: a second one stays queued and is enqueued
    again when the first finishes.
    """
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.queued:
            return None
        take_turns_on_project(session, project_id=job.project_id)
        session.refresh(job)
        if job.status != JobStatus.queued:
            return None
        if job.kind == JobKind.train and _running_training(session, job.project_id, other_than=job.id):
            return None
        if job.attempts >= job.max_attempts:
            job.status, job.finished_at = JobStatus.failed, utcnow()
            job.error = (
                f"gave up after {job.attempts} attempts: its worker stopped each time "
                "(killed, or out of memory); check the worker's logs and memory limit"
            )
            return None
        now = utcnow()
        job.status, job.worker, job.heartbeat_at = JobStatus.running, worker, now
        job.attempts += 1
        job.started_at = job.started_at or now
        job.message = "started" if job.attempts == 1 else f"started again (attempt {job.attempts})"
        return Claim(job.id, job.project_id, job.kind, dict(job.params), job.attempts)


def heartbeat(db: Database, *, job_id: int, worker: str, fraction: float, message: str) -> bool:
    """Record that ``worker`` is alive with this progress; False when the job should stop."""
    with db.session() as session:
        row = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.running)
            .values(heartbeat_at=utcnow(), progress=fraction, message=message)
            .returning(Job.cancel_requested)
        ).first()
    return row is not None and not row.cancel_requested


def finish_job(
    db: Database,
    *,
    job_id: int,
    worker: str,
    status: JobStatus,
    message: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    trace: str | None = None,
) -> bool:
    """Record the outcome, only if ``worker`` still holds the job (a reaped job belongs to its new runner)."""
    values: dict[str, Any] = {"status": status, "message": message[:500], "finished_at": utcnow()}
    if status == JobStatus.succeeded:
        values["progress"] = 1.0
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error"], values["traceback"] = error[:2000], trace
    with db.session() as session:
        changed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.running)
            .values(**values)
            .returning(Job.id)
        ).first()
    return changed is not None


def next_waiting_training(db: Database, *, project_id: int) -> int | None:
    """The project's oldest queued training, to start once the running one has finished."""
    with db.read_session() as session:
        return session.scalars(
            select(Job.id)
            .where(Job.project_id == project_id, Job.kind == JobKind.train, Job.status == JobStatus.queued)
            .order_by(Job.id)
            .limit(1)
        ).first()


def reap_jobs(db: Database, *, stale_seconds: float, include_queued: bool) -> list[tuple[int, JobKind]]:
    """Put running jobs whose worker is gone back in the queue; return the jobs to enqueue again.

    A worker is gone when its heartbeat is older than ``stale_seconds``, or at once when it ran on
    this machine and its process no longer exists (a restart after a crash resumes immediately).
    With ``include_queued``, queued jobs are returned too, in case their queue message was lost.
    """
    now = utcnow()
    host = socket.gethostname()
    requeue: list[tuple[int, JobKind]] = []
    with db.session() as session:
        for job in session.scalars(select(Job).where(Job.status == JobStatus.running)):
            stale = job.heartbeat_at is None or now - job.heartbeat_at > timedelta(seconds=stale_seconds)
            if stale or _dead_here(job.worker, host):
                logger.warning("job %s lost its worker %s; queueing it again", job.id, job.worker)
                job.status, job.worker = JobStatus.queued, None
                job.message = f"queued again: worker stopped during attempt {job.attempts}"
                requeue.append((job.id, job.kind))
        if include_queued:
            queued = session.execute(select(Job.id, Job.kind).where(Job.status == JobStatus.queued))
            requeue.extend((job_id, kind) for job_id, kind in queued if (job_id, kind) not in requeue)
    return requeue


def _dead_here(worker: str | None, host: str) -> bool:
    if not worker or ":" not in worker:
        return False
    worker_host, _, pid = worker.rpartition(":")
    if worker_host != host or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed process nobody has waited for yet still answers signals: a zombie is dead too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _running_training(session: Session, project_id: int, *, other_than: int) -> bool:
    return (
        session.scalars(
            select(Job.id)
            .where(
                Job.project_id == project_id,
                Job.kind == JobKind.train,
                Job.status == JobStatus.running,
                Job.id != other_than,
            )
            .limit(1)
        ).first()
        is not None
    )
