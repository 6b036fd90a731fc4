"""Keeping the Quality page's reports fresh: the ``quality_report`` job that computes and stores them, started when
labels arrive (at most once per ``quality_report_interval_seconds`` of the project), on a schedule, or on request;
and the read that a page makes, which computes in the request only while a project is small.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation.quality_reports import (
    Freshness,
    compute_reports,
    current_labels,
    reports_outdated,
    store_reports,
    stored_report,
)
from annotation.report_marks import mark_reports_outdated
from flywheel.jobs.rows import create_job
from flywheel.jobs.runner import JobContext
from flywheel.jobs.transport import Transport
from storage.db import Database
from storage.models import Job, JobKind, JobStatus, Project, QualityReport, utcnow
from storage.projects import project_settings


@dataclass(frozen=True)
class Report:
    payload: dict[str, Any]
    freshness: Freshness
    job_id: int | None  # a recompute queued or running, if any


def run_quality_reports(ctx: JobContext) -> dict[str, Any]:
    """Job body: compute both reports in one read transaction, then store them."""
    started = utcnow()
    ctx.progress(0.05, "fitting consensus, agreement and scorecards")
    with ctx.db.read_session() as session:
        computed = compute_reports(session, project=session.get_one(Project, ctx.project_id))
    ctx.progress(0.9, "storing the reports")
    with ctx.db.session() as session:
        store_reports(session, project_id=ctx.project_id, computed=computed, job_id=ctx.job_id, started=started)
    labels = computed["labels"]
    return {"message": f"quality reports over {labels} labels", "labels": labels}


def pending_quality_job(session: Session, *, project_id: int) -> int | None:
    return session.scalars(
        select(Job.id)
        .where(
            Job.project_id == project_id,
            Job.kind == JobKind.quality_report,
            Job.status == JobStatus.queued,  # a running one may have read the data before the change
        )
        .limit(1)
    ).first()


def start_quality_job(
    session: Session, *, project_id: int, transport: Transport, trigger: str, delay_seconds: float = 0.0
) -> int:
    """The queued or running recompute, else a new one; its id."""
    pending = pending_quality_job(session, project_id=project_id)
    if pending is not None:
        return pending
    params = {"trigger": trigger}
    kind = JobKind.quality_report
    return create_job(
        session, project_id=project_id, kind=kind, transport=transport, params=params, delay_seconds=delay_seconds
    ).id


def start_quality_if_due(db: Database, transport: Transport, *, project_id: int) -> int | None:
    """From the policy check, as labels arrive: recompute reports that exist and are outdated, no sooner than the
    project's interval after the last computation (a stream of labels gives one recompute per interval). Reports
    nobody has asked for yet are not computed."""
    with db.read_session() as session:  # asked at every label notice: no write lock unless a job starts
        computed_at = reports_outdated(session, project_id=project_id)
        if computed_at is None or pending_quality_job(session, project_id=project_id) is not None:
            return None
        interval = project_settings(session.get_one(Project, project_id)).quality_report_interval_seconds
    delay = max(0.0, (computed_at + timedelta(seconds=interval) - utcnow()).total_seconds())
    with db.session() as session:
        if pending_quality_job(session, project_id=project_id) is not None:  # another check started one meanwhile
            return None
        return start_quality_job(
            session, project_id=project_id, transport=transport, trigger="labels", delay_seconds=delay
        )


def recompute_reports_soon(session: Session, *, project_id: int, transport: Transport, trigger: str) -> int | None:
    """After a change the reports read that is not a label (an exclusion, a gold answer, a consensus refit): mark
    them outdated and start their recompute now, once the change commits; None when no report exists yet."""
    if session.scalar(select(QualityReport.id).where(QualityReport.project_id == project_id).limit(1)) is None:
        return None
    mark_reports_outdated(session, project_id=project_id)
    return start_quality_job(session, project_id=project_id, transport=transport, trigger=trigger)


def quality_report(db: Database, transport: Transport, *, project_id: int, kind: str, sync_labels: int) -> Report | int:
    """The report of ``kind`` as a page should show it. A project of at most ``sync_labels`` current labels gets it
    current, computed in the request when labels (or gold answers, exclusions) changed since (a fraction of a
    second at that size). A larger one gets the stored report with its freshness while a job recomputes it, or,
    when none is stored yet, the id of the job computing the first."""
    with db.read_session() as session:
        found = stored_report(session, project_id=project_id, kind=kind)
        if found is not None and not found[1].outdated:
            return Report(*found, job_id=pending_quality_job(session, project_id=project_id))
        small = current_labels(session, project_id=project_id) <= sync_labels
        if found is not None and not small:
            return Report(*found, job_id=pending_quality_job(session, project_id=project_id))
    if not small:
        with db.session() as session:
            return start_quality_job(session, project_id=project_id, transport=transport, trigger="first request")
    started = utcnow()
    with db.read_session() as session:
        computed = compute_reports(session, project=session.get_one(Project, project_id))
    with db.session() as session:
        store_reports(session, project_id=project_id, computed=computed, started=started)
        fresh = stored_report(session, project_id=project_id, kind=kind)
        if fresh is None:
            raise RuntimeError(f"the {kind} report of project {project_id} was stored but cannot be read back")
        return Report(*fresh, job_id=pending_quality_job(session, project_id=project_id))
