from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.schemas.common import IdField, RequestModel
from storage.models import AnnotationOrigin
from storage.projects import MAX_BOXES


class BoxCreate(RequestModel):
    """One object in a detection answer, in pixels of the upright image (EXIF orientation applied)."""

    label: str = Field(min_length=1, max_length=100, description="One of the project's labels.")
    x: float = Field(allow_inf_nan=False, ge=-1e6, le=1e6, description="Left edge.")
    y: float = Field(allow_inf_nan=False, ge=-1e6, le=1e6, description="Top edge.")
    w: float = Field(allow_inf_nan=False, ge=-1e6, le=1e6, description="Width, above 0.")
    h: float = Field(allow_inf_nan=False, ge=-1e6, le=1e6, description="Height, above 0.")


BOXES_DESCRIPTION = (
    "Detection projects: every object in the image, [] when there is none (a real answer). Each box must lie inside "
    "the image, give or take 1 px (stored clipped to it), have a positive size and a label of the project; at most "
    "the project's `max_boxes`."
)


class BoxRead(BaseModel):
    label: str
    x: float = Field(description="Left edge, in pixels of the upright image.")
    y: float = Field(description="Top edge.")
    w: float
    h: float


class PreLabelRead(BaseModel):
    label: str
    confidence: float = Field(description="The model's probability for `label`, 0 to 1.")
    model_version: str = Field(description="The model that made the suggestion.")
    fallback: bool = Field(
        default=False, description="True when an older model made it because the serving model cannot answer."
    )


class ScoredBoxRead(BoxRead):
    score: float = Field(description="The detector's confidence in the box, 0 to 1.")


class PreLabelBoxesRead(BaseModel):
    boxes: list[ScoredBoxRead] = Field(description="The detected objects, in pixels of the upright image.")
    model_version: str = Field(description="The detector that found them.")


class TaskRead(BaseModel):
    image_id: int
    project_id: int
    content_url: str = Field(description="The original image (send the token).")
    thumbnail_url: str = Field(description="A small upright PNG of it (send the token).")
    width: int = Field(
        description="Width of the upright image (EXIF orientation applied, as a browser shows it), in pixels: the "
        "frame of an answer's boxes. A photo turned a quarter by its orientation has the image's stored `width` "
        "and `height` swapped here."
    )
    height: int = Field(description="Height of the upright image, in pixels.")
    lease_expires_at: datetime = Field(description="Submit before this; afterwards the image may go to someone else.")
    review_reason: str | None = Field(description="Why this image was sent back for another look, if it was.")
    prelabel: PreLabelRead | None = Field(
        description="Classification projects: the newest model's answer, when a model exists."
    )
    prelabel_boxes: PreLabelBoxesRead | None = Field(
        default=None,
        description="Detection projects: the serving detector's boxes scoring at least 0.3, for the annotator to "
        "accept or edit; null until the project has a detector.",
    )


class AnnotationCreate(RequestModel):
    image_id: IdField
    label: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Classification projects: one of the project's labels, spelled exactly.",
    )
    boxes: list[BoxCreate] | None = Field(default=None, max_length=MAX_BOXES, description=BOXES_DESCRIPTION)
    duration_ms: int | None = Field(
        default=None,
        ge=0,
        le=24 * 3600 * 1000,
        description="How long the annotator looked at the image before labeling; feeds the speed scorecards.",
    )


class AnnotationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    image_id: int
    annotator_id: int = Field(description="The user who gave the label.")
    label: str | None = Field(description="The label (classification projects; null in detection projects).")
    boxes: list[BoxRead] | None = Field(
        description="The boxes as stored, clipped to the image (detection projects; null in classification ones)."
    )
    duration_ms: int | None
    origin: AnnotationOrigin = Field(description="human (labeled here) or imported (from Label Studio).")
    is_current: bool = Field(description="False once a correction by the same annotator superseded it.")
    supersedes_id: int | None = Field(description="The annotation this correction replaced.")
    created_at: datetime


class AnnotationAndNext(BaseModel):
    """One round trip per label: the stored answer and the next task, as ``GET .../tasks/next`` would answer."""

    annotation: AnnotationRead
    next_task: TaskRead | None = Field(description="Your next task (leased now, or the one you hold); null: none left.")


class AnnotationsPage(BaseModel):
    items: list[AnnotationRead]
    next_after: int | None = Field(description="Pass it as `after` for the next page; null on the last page.")


class WaitingReasonRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: Literal["needs_annotator", "being_labeled", "open"] = Field(
        description="needs_annotator: every annotator member has labeled or skipped these images, so only a new "
        "member can finish them; being_labeled: someone holds a lease on them now; open: annotators who have not "
        "been served them can take them."
    )
    images: int = Field(description="How many waiting images wait for this reason.")
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
    label: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Classification projects: the known answer, one of the project's labels.",
    )
    boxes: list[BoxCreate] | None = Field(
        default=None, max_length=MAX_BOXES, description="Detection projects: the known boxes. " + BOXES_DESCRIPTION
    )

    @model_validator(mode="after")
    def _an_answer(self) -> GoldSet:
        if self.label is None and self.boxes is None:
            raise ValueError("give the known answer: `label` (classification) or `boxes` (detection)")
        return self


class GoldScoreRead(BaseModel):
    annotator_id: int
    name: str
    answered: int = Field(description="Gold questions the annotator answered.")
    correct: int = Field(description="Of those, answered with the known answer.")
    accuracy: float = Field(description="correct / answered.")


class ReviewRequest(RequestModel):
    image_ids: list[IdField] = Field(min_length=1, max_length=10_000)
    reason: str = Field(min_length=1, max_length=500, description="Shown to the annotator with the image.")


class ReviewResult(BaseModel):
    queued: list[int] = Field(
        description="The images that went to the queue; gold images, and images every annotator member has "
        "already labeled, do not."
    )


class CurrentLabel(BaseModel):
    image_id: int
    label: str | None = Field(
        description="Classification projects: the current label: gold answer, Dawid-Skene's most probable label, or "
        "the majority vote (null in detection projects)."
    )
    boxes: list[BoxRead] | None = Field(
        description="Detection projects: the current boxes ([]: no objects): the gold boxes, else the consensus of "
        "the counted annotators' boxes (null in classification projects)."
    )
    tie: bool = Field(
        description="Classification: several labels had the most votes; the first in the label set won. Detection: "
        "the consensus boxes are weak (GET .../consensus/weak says why once review has asked all it may)."
    )
    label_count: int = Field(description="Current labels from distinct annotators.")
    labels_needed: int = Field(
        description="The labels the image asked for (overlap, review); it waits for at most as many as the "
        "project has annotator members."
    )
    gold: bool = Field(description="The image is a gold question; `label` is its known answer.")


class CurrentLabelsPage(BaseModel):
    items: list[CurrentLabel]
    next_after: int | None = Field(description="Pass it as `after` for the next page; null on the last page.")
