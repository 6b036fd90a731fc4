from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import RequestModel
from storage.models import ModelKind, ModelStatus


class ModelRead(BaseModel):
    """One version in the registry; the model card (`GET /models/{id}`) has everything else."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    kind: ModelKind
    status: ModelStatus
    architecture: str
    input_size: int
    snapshot_id: int | None
    parent_id: int | None
    job_id: int | None
    seed: int
    test_accuracy: float | None = None
    created_at: datetime
    finished_at: datetime | None
    files_pruned_at: datetime | None = Field(
        default=None, description="A refreshed head that stopped serving: when its files were deleted (card kept)."
    )


class PromoteRequest(RequestModel):
    reason: str = Field(default="promoted by hand", max_length=500)


class PredictionRead(BaseModel):
    filename: str
    label: str
    confidence: float
    probabilities: dict[str, float]


class PredictResult(BaseModel):
    model_id: int
    model_version: str
    predictions: list[PredictionRead]


ModelCard = dict[str, Any]
