from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flywheel.jobs.params import (
    DistillParams,
    DriftParams,
    EmbedParams,
    LabelQualityParams,
    MineParams,
    QualityReportParams,
    QuantizeParams,
    RefreshParams,
    TrainParams,
)
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


class DriftJobCreate(RequestModel):
    kind: Literal["drift"]
    params: DriftParams = Field(default_factory=DriftParams, description=PARAMS_DESCRIPTION)


class DistillJobCreate(RequestModel):
    kind: Literal["distill"]
    params: DistillParams = Field(default_factory=DistillParams, description=PARAMS_DESCRIPTION)


class QuantizeJobCreate(RequestModel):
    kind: Literal["quantize"]
    params: QuantizeParams = Field(description=PARAMS_DESCRIPTION)


class QualityReportJobCreate(RequestModel):
    kind: Literal["quality_report"]
    params: QualityReportParams = Field(default_factory=QualityReportParams, description=PARAMS_DESCRIPTION)


# One request shape per kind a person may start (flywheel/jobs/params.PARAMS), told apart by ``kind``.
JobCreate = Annotated[
    TrainJobCreate
    | RefreshJobCreate
    | EmbedJobCreate
    | LabelQualityJobCreate
    | MineJobCreate
    | DriftJobCreate
    | DistillJobCreate
    | QuantizeJobCreate
    | QualityReportJobCreate,
    Field(discriminator="kind"),
]


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
