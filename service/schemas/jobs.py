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
    kind: SubmittableKind = Field(description="train, refresh, embed, label_quality or mine.")  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict, description="Recorded with the job.")


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    kind: JobKind
    status: JobStatus
    progress: float = Field(description="0 to 1.")
    message: str = Field(description="What the job is doing now, or how it ended, in words.")
    params: dict[str, Any]
    result: dict[str, Any] | None = Field(
        description="What a finished job produced (e.g. the model id and its metrics)."
    )
    error: str | None = Field(description="Why the job failed.")
    traceback: str | None = Field(description="The failure's traceback, for whoever runs the service.")
    attempts: int = Field(description="Runs started so far; a worker that died mid-job costs one.")
    max_attempts: int = Field(description="The job fails once this many runs have died.")
    cancel_requested: bool = Field(description="A running job stops at its next progress step.")
    worker: str | None = Field(description="The worker process that runs or ran it.")
    heartbeat_at: datetime | None = Field(
        description="Last sign of life from its worker; a stale one means the worker died."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
