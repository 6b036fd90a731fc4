from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import IdField, RequestModel


class FigureRead(BaseModel):
    value: float | None = Field(description="None when the figure is undefined here; `reason` says why.")
    items: int = Field(description="How many images the figure rests on.")
    reading: str | None = Field(description="Plain-language reading (Landis & Koch bands), e.g. '0.41: moderate'.")
    reason: str | None
    note: str | None = Field(description="Which images were used, when not all overlapped ones.")


class AnnotatorRef(BaseModel):
    id: int
    name: str


class ClassAgreementRead(BaseModel):
    label: str
    ratings: int = Field(description="Labels of this class on overlapped images.")
    fleiss_kappa: FigureRead = Field(description="This class against all others.")
    krippendorff_alpha: FigureRead


class PairAgreementRead(BaseModel):
    annotator_a: AnnotatorRef
    annotator_b: AnnotatorRef
    shared: int = Field(description="Images both labeled.")
    percent_agreement: float
    cohen_kappa: FigureRead


class HumanAccuracyRead(BaseModel):
    annotator_id: int
    name: str
    labels: int
    correct: int
    accuracy: float


class HumanReferenceRead(BaseModel):
    items: int = Field(description="Test images with a gold answer or labels from two annotators.")
    pooled_accuracy: float | None
    median_accuracy: float | None
    annotators: list[HumanAccuracyRead]
    reason: str | None


class AgreementRead(BaseModel):
    labels: list[str]
    annotators: list[AnnotatorRef] = Field(description="Annotators whose labels count (excluded ones left out).")
    excluded_annotators: list[int]
    reason: str | None = Field(description="Why the figures are empty, when they are.")
    items: int = Field(description="Overlapped images: labels from at least two annotators.")
    percent_agreement: FigureRead
    unanimous: float | None = Field(description="Share of overlapped images on which every label agrees.")
    fleiss_kappa: FigureRead
    krippendorff_alpha: FigureRead
    per_class: list[ClassAgreementRead]
    pairs: list[PairAgreementRead]
    pairs_below_minimum: int = Field(description="Pairs of annotators sharing too few images for a kappa.")
    min_shared_items: int
    human_reference: HumanReferenceRead


class FlagRead(BaseModel):
    flag: str = Field(description="unreliable, random or systematic_confusion.")
    evidence: str
    details: dict[str, Any]


class SpeedRead(BaseModel):
    median_seconds: float | None
    source: str | None = Field(description="lease (task served to label submitted) or between_submissions.")
    samples: int


class ExclusionInfo(BaseModel):
    reason: str
    excluded_by_id: int | None
    excluded_at: datetime


class ScorecardRead(BaseModel):
    annotator_id: int
    name: str
    member: bool = Field(description="False once removed from the project; their labels still count.")
    excluded: bool
    exclusion: ExclusionInfo | None
    labels: int
    speed: SpeedRead
    gold_answered: int
    gold_correct: int
    gold_accuracy: float | None
    overlapped_labels: int = Field(description="Labels on images someone else labeled too.")
    agreement_with_consensus: float | None
    checked_labels: int = Field(description="Gold answers and overlapped labels: what the flags read.")
    checked_accuracy: float | None
    kappa: float | None = Field(description="Checked accuracy corrected for chance.")
    estimated_accuracy: float | None = Field(description="Dawid-Skene's estimate.")
    confusion: list[list[float]] | None = Field(
        description="Dawid-Skene: confusion[true][given], rows and columns in label order."
    )
    flags: list[FlagRead]


class ScorecardsRead(BaseModel):
    consensus_method: str
    reason: str | None = Field(description="Why consensus fell back to majority vote, when it did.")
    labels: list[str]
    crowd_accuracy: float | None
    min_gold_answers: int
    min_overlapped_labels: int
    annotators: list[ScorecardRead]


class ExclusionCreate(RequestModel):
    reason: str = Field(min_length=1, max_length=500)


class ExclusionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    annotator_id: int
    reason: str
    excluded_by_id: int | None
    created_at: datetime
    revoked_at: datetime | None
    revoked_by_id: int | None


class ConsensusSummaryRead(BaseModel):
    method: str
    reason: str | None
    images: int
    overlapped_images: int
    annotators: int
    excluded_annotators: int
    changed: int
    differs_from_majority: int
    sent_to_review: int
    iterations: int


class ExclusionChange(BaseModel):
    exclusion: ExclusionRead
    consensus: ConsensusSummaryRead


class WeakImageRead(BaseModel):
    image_id: int
    label: str | None
    posterior: float | None
    tie: bool
    label_count: int
    votes: dict[str, int]


class WeakImagesPage(BaseModel):
    items: list[WeakImageRead]
    next_after: int | None


class LabelIssueRead(BaseModel):
    rank: int
    image_id: int
    given_label: str
    suggested_label: str
    score: float = Field(description="Out-of-sample probability of the given label: low means likely wrong.")
    current_label: str | None = Field(description="The image's label now; it may have been corrected since.")
    sent_for_review_at: datetime | None
    found_at: datetime


class LabelIssuesPage(BaseModel):
    items: list[LabelIssueRead]
    next_after_rank: int | None


class RelabelRequest(RequestModel):
    image_ids: list[IdField] = Field(min_length=1, max_length=10_000)
