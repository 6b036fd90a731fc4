from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import RequestModel
from service.schemas.labeling import ScoredBoxRead
from storage.models import ModelKind, ModelStatus


class ModelRead(BaseModel):
    """One version in the registry; the model card (`GET /models/{id}`) has everything else."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    kind: ModelKind = Field(
        description="full (a whole network trained on a snapshot) or refresh (the parent's backbone with a "
        "refitted head; a detector's: its heads fine-tuned on the newest labels)."
    )
    status: ModelStatus = Field(
        description="training, candidate (evaluated, not promoted), champion (serving), retired or failed."
    )
    architecture: str
    input_size: int = Field(description="Side in pixels images are resized to.")
    snapshot_id: int | None = Field(description="The frozen labeled set it was trained on.")
    parent_id: int | None = Field(
        description="The champion it was compared with (for a refresh: whose backbone it reuses)."
    )
    job_id: int | None = Field(description="The job that trained it.")
    seed: int
    test_accuracy: float | None = Field(default=None, description="Accuracy on the test split of its snapshot.")
    deployment: str | None = Field(
        default=None, description="shadow or canary (PUT /models/{id}/deployment); null for neither."
    )
    traffic_share: float | None = Field(default=None, description="A canary's share of /predict requests.")
    created_at: datetime
    finished_at: datetime | None
    files_pruned_at: datetime | None = Field(
        default=None, description="A refreshed head that stopped serving: when its files were deleted (card kept)."
    )


class PromoteRequest(RequestModel):
    reason: str = Field(default="promoted by hand", max_length=500, description="Recorded with the promotion.")


class PredictionRead(BaseModel):
    filename: str = Field(description="The uploaded file name.")
    label: str | None = Field(default=None, description="Classification projects: the likeliest label.")
    confidence: float | None = Field(default=None, description="The probability of `label`, 0 to 1.")
    probabilities: dict[str, float] | None = Field(default=None, description="The probability of every label.")
    boxes: list[ScoredBoxRead] | None = Field(
        default=None,
        description="Detection projects: the objects found (score at least 0.3), in pixels of the upright image, "
        "best first.",
    )


class PredictResult(BaseModel):
    model_id: int
    model_version: str = Field(description="The version every prediction names, e.g. model-12.")
    fallback: bool = Field(
        default=False, description="True when an older model answered because the serving model cannot."
    )
    fallback_reason: str | None = Field(default=None, description="Why the models before it could not answer.")
    predictions: list[PredictionRead]


ModelCard = dict[str, Any]
