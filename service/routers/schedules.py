from __future__ import annotations

from fastapi import APIRouter

from flywheel.schedules import list_schedules, set_schedules
from service.deps import EngineerProject, EngineerProjectForWrite, ReadSessionDep, SessionDep
from service.schemas.common import ERROR_RESPONSES
from service.schemas.schedules import ScheduleRead, SchedulesSet
from storage.models import JobKind

router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("/schedules", summary="The project's job schedules (admin, engineer)")
def index(project: EngineerProject, session: ReadSessionDep) -> list[ScheduleRead]:
    """The project's schedules, one per scheduled job kind: its cron expression (UTC), next and last run, and the
    last job it started."""
    return [ScheduleRead.model_validate(s) for s in list_schedules(session, project_id=project.id)]


@router.put(
    "/schedules",
    summary="Set when mine, train and label_quality jobs start, as cron expressions in UTC (admin, engineer)",
)
def replace(project: EngineerProjectForWrite, body: SchedulesSet, session: SessionDep) -> list[ScheduleRead]:
    """Makes the project's schedules exactly these: a cron expression (five fields in UTC, or `@hourly`,
    `@daily`, ...) for `mine`, `train` and `label_quality`; null or absent: no schedule. An invalid expression is a
    422 saying why. The worker checks every minute; a run missed while nothing ran happens once."""
    crons = {JobKind(kind): cron for kind, cron in body.model_dump().items()}
    return [ScheduleRead.model_validate(s) for s in set_schedules(session, project=project, crons=crons)]
