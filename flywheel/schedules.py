"""Per-project schedules: cron expressions (UTC) that start ``mine``, ``train``, ``label_quality``, ``drift`` and
``quality_report`` jobs.

The worker's ``upkeep`` (a huey periodic task every ``LABELWHEEL_UPKEEP_SECONDS``, a minute by default, on SQLite's
queue and Redis alike) and every worker start call ``run_due_schedules``. A schedule keeps only its next due time,
which moves past *now* whenever it runs: a service that was down over many slots runs the job once. Several workers
may tick at the same moment; a conditional update lets exactly one of them start the job.
"""

from __future__ import annotations

import logging
from datetime import datetime

from croniter import croniter
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flywheel.jobs.rows import create_job, require_job_for_task
from flywheel.jobs.transport import Transport
from storage.db import Database
from storage.errors import InvalidInput
from storage.models import Job, JobKind, JobStatus, Project, Schedule, utcnow

logger = logging.getLogger(__name__)

SCHEDULABLE = (JobKind.mine, JobKind.train, JobKind.label_quality, JobKind.drift, JobKind.quality_report)
ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
FIELDS = "minute hour day-of-month month day-of-week"


def next_slot(cron: str, after: datetime) -> datetime:
    """The first time after ``after`` that ``cron`` names (UTC); InvalidInput saying why when it is not valid."""
    expression = cron.strip()
    if expression not in ALIASES and len(expression.split()) != 5:
        raise InvalidInput(
            f"cron expression {cron!r} has {len(expression.split())} fields; use five ({FIELDS}), "
            "e.g. '0 * * * *' for every hour, or one of " + ", ".join(sorted(ALIASES)),
            code="invalid_cron",
        )
    try:
        return croniter(expression, after).get_next(datetime)
    except Exception as exc:  # croniter signals bad fields and impossible dates with several exception types
        raise InvalidInput(f"cron expression {cron!r} is not valid: {exc}", code="invalid_cron") from None


def list_schedules(session: Session, *, project_id: int) -> list[Schedule]:
    return list(session.scalars(select(Schedule).where(Schedule.project_id == project_id).order_by(Schedule.kind)))


def set_schedules(session: Session, *, project: Project, crons: dict[JobKind, str | None]) -> list[Schedule]:
    """Make the project's schedules exactly ``crons`` (None or absent: no schedule for that kind).

    A schedule whose expression is unchanged keeps its next due time.
    """
    for kind, cron in crons.items():
        if cron is not None:
            require_job_for_task(project, kind=kind)
    now = utcnow()
    due = {kind: next_slot(cron, now) for kind, cron in crons.items() if cron is not None}  # all valid, or none set
    current = {s.kind: s for s in list_schedules(session, project_id=project.id)}
    for kind in SCHEDULABLE:
        schedule, cron = current.get(kind), crons.get(kind)
        if cron is None:
            if schedule is not None:
                session.delete(schedule)
        elif schedule is None:
            session.add(Schedule(project_id=project.id, kind=kind, cron=cron.strip(), next_run_at=due[kind]))
        elif schedule.cron != cron.strip():
            schedule.cron, schedule.next_run_at = cron.strip(), due[kind]
    session.flush()
    return list_schedules(session, project_id=project.id)


def run_due_schedules(db: Database, transport: Transport, *, now: datetime | None = None) -> list[int]:
    """Start the jobs whose schedule is due; returns their ids. A job of the same kind still queued or running
    for the project stands in for the new one."""
    now = now or utcnow()
    with db.read_session() as session:
        due = session.execute(select(Schedule.id, Schedule.next_run_at).where(Schedule.next_run_at <= now)).all()
    started = []
    for schedule_id, was_due in due:
        with db.session() as session:
            schedule = session.get(Schedule, schedule_id)
            if schedule is None:
                continue
            following = next_slot(schedule.cron, now)
            claimed = session.execute(
                update(Schedule)
                .where(Schedule.id == schedule_id, Schedule.next_run_at == was_due)
                .values(next_run_at=following, last_run_at=now)
                .returning(Schedule.id)
            ).first()
            if claimed is None:  # another worker's tick took this slot
                continue
            busy = session.scalars(
                select(Job.id)
                .where(
                    Job.project_id == schedule.project_id,
                    Job.kind == schedule.kind,
                    Job.status.in_((JobStatus.queued, JobStatus.running)),
                )
                .limit(1)
            ).first()
            if busy is None:
                job = create_job(
                    session,
                    project_id=schedule.project_id,
                    kind=schedule.kind,
                    transport=transport,
                    params={"trigger": "schedule", "cron": schedule.cron},
                )
                busy = job.id
                started.append(job.id)
            session.execute(update(Schedule).where(Schedule.id == schedule_id).values(last_job_id=busy))
            logger.info("schedule %s (%s) of project %s: job %s", schedule_id, schedule.kind, schedule.project_id, busy)
    return started
