from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flywheel.jobs.params import EmbedParams, LabelQualityParams, MineParams, RefreshParams, TrainParams
from service.schemas.common import RequestModel
from storage.models import JobKind, JobStatus

PARAMS_DESCRIPTION = "Recorded with the job; each kind takes only its own, within bounds."


class TrainJobCreate(RequestModel):
    kind: Literal["train"]
    params: TrainParams = Field(default_factory=TrainParams, description=PARAMS_DESCRIPTION)


class RefreshJobCreate(RequestModel):
    kind: Literal["refresh"]
    params: RefreshParams = Field(default_factory=RefreshParams, description=PARAMS_DESCRIPTION)


class EmbedJobCreate(RequestModel):
    kind: Literal["embed"]
    params: EmbedParams = Field(default_factory=EmbedParams, description=PARAMS_DESCRIPTION)


class LabelQualityJobCreate(RequestModel):
    kind: Literal["label_quality"]
    params: LabelQualityParams = Field(default_factory=LabelQualityParams, description=PARAMS_DESCRIPTION)


class MineJobCreate(RequestModel):
    kind: Literal["mine"]
    params: MineParams = Field(default_factory=MineParams, description=PARAMS_DESCRIPTION)


# One request shape per kind a person may start (flywheel/jobs/params.PARAMS), told apart by ``kind``.
JobCreate = Annotated[
    TrainJobCreate | RefreshJobCreate | EmbedJobCreate | LabelQualityJobCreate | MineJobCreate,
    Field(discriminator="kind"),
]


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
