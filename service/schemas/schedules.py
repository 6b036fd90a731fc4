from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import RequestModel
from storage.models import JobKind

CRON = "A cron expression in UTC with five fields (minute hour day-of-month month day-of-week), or @hourly, @daily..."


class SchedulesSet(RequestModel):
    """Every schedule of the project; a kind left out or null has none."""

    mine: str | None = Field(default=None, max_length=100, description=CRON, examples=["0 * * * *"])
    train: str | None = Field(default=None, max_length=100, description=CRON, examples=["30 2 * * *"])
    label_quality: str | None = Field(default=None, max_length=100, description=CRON, examples=["0 3 * * 1"])
    drift: str | None = Field(default=None, max_length=100, description=CRON, examples=["0 * * * *"])
    quality_report: str | None = Field(default=None, max_length=100, description=CRON, examples=["*/15 * * * *"])


class ScheduleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: JobKind
    cron: str = Field(description="The cron expression, in UTC.")
    next_run_at: datetime = Field(description="When the job next starts (UTC).")
    last_run_at: datetime | None = Field(description="When it last started a job.")
    last_job_id: int | None = Field(description="The job the last due time started, or found still running.")
