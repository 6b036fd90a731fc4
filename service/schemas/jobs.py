from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flywheel.jobs.rows import SUBMITTABLE
from service.schemas.common import RequestModel
from storage.models import JobKind, JobStatus

# The kinds a person may start; the flywheel starts the others (export) itself.
SubmittableKind = StrEnum("SubmittableKind", {kind.value: kind.value for kind in SUBMITTABLE})  # type: ignore[misc]


class JobCreate(RequestModel):
    kind: SubmittableKind  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict, description="Recorded with the job.")


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    kind: JobKind
    status: JobStatus
    progress: float = Field(description="0 to 1.")
    message: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    traceback: str | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    worker: str | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
