from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import IdField, RequestModel
from storage.models import AnnotationOrigin


class PreLabelRead(BaseModel):
    label: str
    confidence: float
    model_version: str


class TaskRead(BaseModel):
    image_id: int
    project_id: int
    content_url: str
    thumbnail_url: str
    width: int
    height: int
    lease_expires_at: datetime
    review_reason: str | None = Field(description="Why this image was sent back for another look, if it was.")
    prelabel: PreLabelRead | None = Field(description="The newest model's answer, when a model exists.")


class AnnotationCreate(RequestModel):
    image_id: IdField
    label: str = Field(min_length=1, max_length=100)
    duration_ms: int | None = Field(default=None, ge=0, le=24 * 3600 * 1000)


class AnnotationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    image_id: int
    annotator_id: int
    label: str
    duration_ms: int | None
    origin: AnnotationOrigin
    is_current: bool
    supersedes_id: int | None
    created_at: datetime


class AnnotationsPage(BaseModel):
    items: list[AnnotationRead]
    next_after: int | None


class ProgressRead(BaseModel):
    images: int
    waiting: int
    done: int
    labeled_by_you: int


class GoldSet(RequestModel):
    image_id: IdField
    label: str = Field(min_length=1, max_length=100)


class GoldScoreRead(BaseModel):
    annotator_id: int
    name: str
    answered: int
    correct: int
    accuracy: float


class ReviewRequest(RequestModel):
    image_ids: list[IdField] = Field(min_length=1, max_length=10_000)
    reason: str = Field(min_length=1, max_length=500)


class ReviewResult(BaseModel):
    queued: list[int]


class CurrentLabel(BaseModel):
    image_id: int
    label: str
    tie: bool = Field(description="Several labels had the most votes; the first in the label set won.")
    label_count: int
    labels_needed: int
    gold: bool


class CurrentLabelsPage(BaseModel):
    items: list[CurrentLabel]
    next_after: int | None
