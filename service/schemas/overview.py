"""What the console's overview, models and mining pages read beyond the other endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class SplitCounts(BaseModel):
    train: int
    test: int


class ImageStates(BaseModel):
    total: int
    unlabeled: int = Field(description="Waiting for their first label.")
    overlap: int = Field(description="Labeled, waiting for more independent labels (overlap).")
    review: int = Field(description="Sent back for one more label (a weak consensus, a doubted label, by hand).")
    done: int = Field(description="Not waiting for any label.")
    split: SplitCounts = Field(description="All images by their fixed split.")


class ClassCount(BaseModel):
    label: str
    train: int = Field(description="Current labels (boxes in a detection project) of this class on train images.")
    test: int = Field(description="The same on test images: the share the models are judged on.")


class DayCount(BaseModel):
    day: str = Field(description="A UTC date, YYYY-MM-DD.")
    labels: int = Field(description="Answers submitted that day, corrections included.")


class AnnotatorCount(BaseModel):
    annotator_id: int
    name: str
    labels: int = Field(description="Their current answers in the project.")


class OverviewRead(BaseModel):
    images: ImageStates
    classes: list[ClassCount] = Field(description="Per label, in the project's order.")
    days: list[DayCount] = Field(description="The last 30 days with labels, oldest first.")
    annotators: list[AnnotatorCount] = Field(description="Most labels first.")


class QueuedImageRead(BaseModel):
    image_id: int
    tier: str = Field(description="overlap, review or fresh: the queue serves them in this order.")
    priority: float = Field(description="Within a tier, higher first: the mining score once a mining pass ran.")
    why: str = Field(description="Why it waits: the overlap still missing, the review reason, or a fresh image.")
    label_count: int
    labels_needed: int


class QueuePreview(BaseModel):
    strategy: str = Field(description="The project's mining strategy, which set the priorities.")
    items: list[QueuedImageRead]


class CurvePoint(BaseModel):
    model_id: int
    status: str
    created_at: datetime
    labels: int | None = Field(description="Labeled images in the snapshot it was trained on.")
    metric: str | None = Field(description="The headline metric's name on its card, e.g. test_accuracy.")
    value: float | None = Field(description="Its value on the snapshot's test split; null until evaluated.")
    baseline: float | None = Field(
        description="The baseline on the same test split: the majority class's accuracy, or a detector's baseline's "
        "mAP@.5 (each class's mean training box)."
    )
    map50: float | None = Field(description="A detector's mAP@.5 on the test split (COCO, pycocotools); null else.")
    map: float | None = Field(description="A detector's mAP@[.5:.95] (COCO's AP); null for a classifier.")
    promoted: bool = Field(description="Whether the automatic decision promoted it.")
    rule: str | None = Field(description="The rule that decided: not worse, below the champion, significantly worse.")
    reason: str | None
    p_value: float | None = Field(description="McNemar's exact test against the champion of the time.")
    promotions: list[dict[str, Any]] = Field(
        description="Each time it became champion: at, by_user (null: automatic), reason, replaced (model id)."
    )
