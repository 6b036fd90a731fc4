from __future__ import annotations

from datetime import datetime
from typing import Literal

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


class WaitingReasonRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: Literal["needs_annotator", "being_labeled", "open"] = Field(
        description="needs_annotator: every annotator member has labeled or skipped these images, so only a new "
        "member can finish them; being_labeled: someone holds a lease on them now; open: annotators who have not "
        "been served them can take them."
    )
    images: int
    message: str = Field(description="The reason in words, for people.")


class ProgressRead(BaseModel):
    images: int = Field(description="Images in the project.")
    waiting: int = Field(description="Images still waiting for labels.")
    done: int = Field(description="Images with every label they can get (images - waiting).")
    labeled_by_you: int = Field(description="Tasks the caller has submitted in this project.")
    waiting_reasons: list[WaitingReasonRead] = Field(
        description="Why the waiting images wait, by reason; their counts add up to `waiting` (an image leased "
        "by a non-member after every member was served it counts twice)."
    )


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
