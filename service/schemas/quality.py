from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import IdField, RequestModel
from service.schemas.labeling import BoxRead


class ReportRead(BaseModel):
    """What a stored quality report covers: a job recomputes it as labels arrive, so it may trail them a little."""

    computed_at: datetime = Field(description="When the figures were computed.")
    labels: int = Field(description="Current labels of the project when they were computed.")
    labels_through: int = Field(description="The newest annotation id they include.")
    newer_labels: bool = Field(
        description="Labels arrived since: a recompute follows within the project's quality_report_interval_seconds."
    )
    outdated: bool = Field(
        description="Newer labels, or a change without labels since (a gold answer, an exclusion, a consensus refit)."
    )
    recompute_job_id: int | None = Field(description="The quality_report job queued or running, if any.")


class QualityReportPending(BaseModel):
    """The answer while a large project's first quality report is being computed: poll the job, then ask again."""

    status: Literal["computing"] = "computing"
    job_id: int
    message: str


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
    labels: int = Field(description="The annotator's labels on test images with a reference label.")
    correct: int = Field(description="Of those, equal to the consensus label.")
    accuracy: float


class HumanReferenceRead(BaseModel):
    items: int = Field(description="Test images with a gold answer or labels from two annotators.")
    pooled_accuracy: float | None = Field(
        description="All those labels together against consensus: the human accuracy a model is scored against."
    )
    median_accuracy: float | None = Field(description="The typical annotator's accuracy.")
    annotators: list[HumanAccuracyRead]
    reason: str | None = Field(description="Why the figures are empty, when they are.")


class AgreementRead(BaseModel):
    labels: list[str] = Field(description="The project's labels, in order.")
    annotators: list[AnnotatorRef] = Field(description="Annotators whose labels count (excluded ones left out).")
    excluded_annotators: list[int] = Field(
        description="Ids of annotators whose labels an admin excluded from consensus."
    )
    reason: str | None = Field(description="Why the figures are empty, when they are.")
    items: int = Field(description="Overlapped images: labels from at least two annotators.")
    percent_agreement: FigureRead
    unanimous: float | None = Field(description="Share of overlapped images on which every label agrees.")
    fleiss_kappa: FigureRead
    krippendorff_alpha: FigureRead
    per_class: list[ClassAgreementRead]
    pairs: list[PairAgreementRead]
    pairs_below_minimum: int = Field(description="Pairs of annotators sharing too few images for a kappa.")
    min_shared_items: int = Field(description="Fewest images two annotators must share for their Cohen's kappa.")
    human_reference: HumanReferenceRead = Field(
        description="How accurate the annotators are against consensus on test images."
    )
    report: ReportRead | None = Field(default=None, description="When these figures were computed, over which labels.")


class BoxFiguresRead(BaseModel):
    first_boxes: int = Field(description="Boxes of the first annotator (overall: of annotator_a).")
    second_boxes: int
    matched: int = Field(description="Boxes paired one to one at the project's iou_threshold or more.")
    precision: float | None = Field(description="matched / second_boxes, reading the first as the reference.")
    recall: float | None = Field(description="matched / first_boxes.")
    f1: float | None = Field(description="2 matched / all boxes; symmetric.")
    mean_iou: float | None = Field(description="Mean IoU of the matched boxes.")
    label_agreement: float | None = Field(description="Share of matched boxes given the same label by both.")
    cohen_kappa: FigureRead = Field(description="On the labels of matched boxes.")


class ClassBoxAgreementRead(BaseModel):
    label: str
    figures: BoxFiguresRead = Field(description="A box counts for this class only when both gave it this label.")


class BoxPairAgreementRead(BaseModel):
    images: int = Field(description="Images both answered (an empty answer, no objects, counts).")
    overall: BoxFiguresRead = Field(description="Boxes paired whatever their labels.")
    per_class: list[ClassBoxAgreementRead]


class AnnotatorPairBoxAgreementRead(BoxPairAgreementRead):
    annotator_a: AnnotatorRef
    annotator_b: AnnotatorRef


class BoxAgreementRead(BaseModel):
    """Agreement of a detection project: boxes matched one to one by IoU (Hungarian) between annotators."""

    task_type: Literal["detection"] = "detection"
    labels: list[str] = Field(description="The project's classes, in order.")
    annotators: list[AnnotatorRef] = Field(description="Annotators whose boxes count (excluded ones left out).")
    excluded_annotators: list[int]
    iou_threshold: float = Field(description="Project setting: boxes at this IoU or more are the same object.")
    images: int = Field(description="Overlapped images: boxes from at least two annotators.")
    reason: str | None = Field(description="Why the figures are empty, when they are.")
    overall: BoxPairAgreementRead | None = Field(description="Every pair of annotators' shared images pooled.")
    pairs: list[AnnotatorPairBoxAgreementRead]
    report: ReportRead | None = Field(default=None, description="When these figures were computed, over which labels.")


class FlagRead(BaseModel):
    flag: str = Field(description="unreliable, random or systematic_confusion.")
    evidence: str = Field(description="Why the annotator was flagged, in words.")
    details: dict[str, Any] = Field(description="The numbers behind the flag.")


class SpeedRead(BaseModel):
    median_seconds: float | None = Field(description="Median time per label.")
    source: str | None = Field(description="lease (task served to label submitted) or between_submissions.")
    samples: int = Field(description="Labels the median rests on.")


class ExclusionInfo(BaseModel):
    reason: str
    excluded_by_id: int | None = Field(description="The admin who excluded them.")
    excluded_at: datetime


class ScorecardRead(BaseModel):
    annotator_id: int
    name: str
    member: bool = Field(description="False once removed from the project; their labels still count.")
    excluded: bool = Field(description="An admin left their labels out of consensus.")
    exclusion: ExclusionInfo | None
    labels: int = Field(description="Current labels the annotator gave in this project.")
    speed: SpeedRead
    gold_answered: int
    gold_correct: int
    gold_accuracy: float | None = Field(description="gold_correct / gold_answered.")
    overlapped_labels: int = Field(description="Labels on images someone else labeled too.")
    agreement_with_consensus: float | None = Field(
        description="Share of their overlapped labels equal to the consensus label."
    )
    checked_labels: int = Field(description="Gold answers and overlapped labels: what the flags read.")
    checked_accuracy: float | None = Field(
        description="Accuracy on checked labels: gold answers and agreement with consensus on overlap."
    )
    kappa: float | None = Field(description="Checked accuracy corrected for chance.")
    estimated_accuracy: float | None = Field(description="Dawid-Skene's estimate.")
    confusion: list[list[float]] | None = Field(
        description="Dawid-Skene: confusion[true][given], rows and columns in label order."
    )
    flags: list[FlagRead]


class ScorecardsRead(BaseModel):
    consensus_method: str = Field(description="dawid_skene, or majority while there is too little overlap to fit it.")
    reason: str | None = Field(description="Why consensus fell back to majority vote, when it did.")
    labels: list[str]
    crowd_accuracy: float | None = Field(
        description="Median checked accuracy of annotators with enough evidence: the flags compare to it."
    )
    min_gold_answers: int = Field(description="Gold answers that are enough evidence for a flag ...")
    min_overlapped_labels: int = Field(description="... or overlapped labels (a mix of both also counts).")
    annotators: list[ScorecardRead]
    report: ReportRead | None = Field(default=None, description="When these figures were computed, over which labels.")


class BoxConfusionRead(BaseModel):
    expected: str = Field(description="The reference box's class.")
    given: str = Field(description="The class the annotator gave the matched box.")
    boxes: int


class BoxScorecardRead(BaseModel):
    images: int = Field(description="Images scored.")
    objects: int = Field(description="Reference boxes on them (consensus or gold).")
    boxes: int = Field(description="The annotator's boxes on them.")
    matched: int = Field(description="Their boxes matched one to one to an object at the project's iou_threshold.")
    recall: float | None = Field(description="matched / objects: the share of objects they found.")
    precision: float | None = Field(description="matched / boxes.")
    missed: int = Field(description="Objects they neither matched nor put inside one of their merge boxes.")
    extra: int = Field(description="Their boxes matching no object (merge boxes aside).")
    loose: int = Field(description="Matched boxes below the project's tight_iou.")
    mean_iou: float | None = Field(description="Mean IoU of their matched boxes.")
    confused: int = Field(description="Matched boxes with another class than the reference.")
    confusions: list[BoxConfusionRead] = Field(description="Those, by (expected, given) class, most frequent first.")
    merges: int = Field(description="Their boxes outlining two or more objects as one.")
    merged_objects: int = Field(description="Objects inside those merge boxes (and not matched otherwise).")
    flags: list[FlagRead] = Field(
        description="missed_objects, extra_boxes, loose_boxes, class_confusion or merges, each with its evidence; "
        "raised once min_images images are scored."
    )


class BoxAnnotatorScorecardRead(BaseModel):
    annotator_id: int
    name: str
    member: bool = Field(description="False once removed from the project; their answers still count.")
    excluded: bool = Field(description="An admin left their boxes out of consensus.")
    exclusion: ExclusionInfo | None
    answers: int = Field(description="Current answers (one per image) the annotator gave in this project.")
    boxes: int = Field(description="Boxes in those answers.")
    speed: SpeedRead
    against_consensus: BoxScorecardRead | None = Field(
        description="On images someone else answered too, against the image's consensus boxes; null when none."
    )
    against_gold: BoxScorecardRead | None = Field(
        description="On gold questions, against their gold boxes; null when the annotator answered none."
    )


class BoxScorecardsRead(BaseModel):
    """Scorecards of a detection project: each annotator's boxes against consensus and gold boxes."""

    task_type: Literal["detection"] = "detection"
    labels: list[str] = Field(description="The project's classes, in order.")
    iou_threshold: float = Field(description="Project setting: a box matches an object at this IoU or more.")
    tight_iou: float = Field(description="Project setting: a matched box below this IoU is loose.")
    min_images: int = Field(description="Images scored before any flag is raised.")
    annotators: list[BoxAnnotatorScorecardRead]
    report: ReportRead | None = Field(default=None, description="When these figures were computed, over which labels.")


class ExclusionCreate(RequestModel):
    reason: str = Field(min_length=1, max_length=500)


class ExclusionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    annotator_id: int
    reason: str
    excluded_by_id: int | None = Field(description="The admin who excluded them.")
    created_at: datetime
    revoked_at: datetime | None = Field(description="When the exclusion ended; null while it holds.")
    revoked_by_id: int | None = Field(description="The admin who ended it.")


class ConsensusSummaryRead(BaseModel):
    method: str = Field(description="dawid_skene, or majority while there is too little overlap to fit it.")
    reason: str | None = Field(description="Why consensus fell back to majority vote, when it did.")
    images: int = Field(description="Images that have a consensus label.")
    overlapped_images: int = Field(description="Images with labels from at least two annotators.")
    annotators: int = Field(description="Annotators whose labels count.")
    excluded_annotators: int
    changed: int = Field(description="Images whose consensus label changed.")
    differs_from_majority: int = Field(description="Images where the consensus is not the majority vote.")
    sent_to_review: int = Field(description="Images with a weak consensus sent to one more annotator.")
    iterations: int = Field(description="Dawid-Skene's EM iterations (0 under majority vote).")


class ExclusionChange(BaseModel):
    exclusion: ExclusionRead
    consensus: ConsensusSummaryRead = Field(description="The consensus refit that the change triggered.")


class WeakImageRead(BaseModel):
    image_id: int
    label: str | None = Field(description="The current consensus label; null when no usable label is left.")
    posterior: float | None = Field(
        description="Dawid-Skene's probability that the label is right; null under majority vote."
    )
    tie: bool = Field(description="Several labels had the most votes.")
    label_count: int
    votes: dict[str, int] = Field(description="Current labels per label name.")


class WeakImagesPage(BaseModel):
    items: list[WeakImageRead]
    next_after: int | None = Field(description="Pass it as `after` for the next page; null on the last page.")


class AnswerBoxesRead(BaseModel):
    annotator_id: int
    boxes: list[BoxRead]


class WeakBoxImageRead(BaseModel):
    image_id: int
    boxes: list[BoxRead] | None = Field(description="The current consensus boxes.")
    reasons: list[str] = Field(
        description="at_quorum (a box drawn by just the quorum), half_drawn (by exactly half the annotators), "
        "class_tie (a box's class vote tied), low_iou (a box's outlines agree little), merge_vote (a box kept only "
        "with votes of boxes drawn around it and a neighbour), no_counted_answer (every answer's annotator is "
        "excluded)."
    )
    label_count: int
    answers: list[AnswerBoxesRead] = Field(description="Each counted annotator's current boxes.")


class WeakBoxImagesPage(BaseModel):
    task_type: Literal["detection"] = "detection"
    items: list[WeakBoxImageRead]
    next_after: int | None = Field(description="Pass it as `after` for the next page; null on the last page.")


class LabelIssueRead(BaseModel):
    rank: int = Field(description="1 is the most likely wrong.")
    image_id: int
    given_label: str = Field(
        description="The label when the job ran; detection: the class of the box in question (empty if overlooked)."
    )
    suggested_label: str = Field(description="The model's most probable label (detection: for that box).")
    score: float = Field(
        description="Classification: out-of-sample probability of the given label; detection: cleanlab's ObjectLab "
        "label quality score of the image. Low means likely wrong."
    )
    issue_type: str | None = Field(
        default=None,
        description="Detection only: overlooked (an object no box marks), swap (a box of the wrong class) or badloc "
        "(a badly located box).",
    )
    box: dict[str, float] | None = Field(
        default=None,
        description="Detection only: the box in question {x, y, w, h} in upright image pixels: the model's box if "
        "overlooked, else the given box.",
    )
    type_scores: dict[str, float] | None = Field(
        default=None, description="Detection only: each kind's score for the image (low is bad, 1.0: no sign of it)."
    )
    current_label: str | None = Field(description="The image's label now; it may have been corrected since.")
    current_boxes: list[dict[str, Any]] | None = Field(
        default=None, description="Detection only: the image's consensus boxes now."
    )
    sent_for_review_at: datetime | None = Field(description="When the image was sent for a new label, if it was.")
    found_at: datetime


class LabelIssuesPage(BaseModel):
    items: list[LabelIssueRead]
    next_after_rank: int | None = Field(description="Pass it as `after_rank` for the next page; null on the last page.")


class RelabelRequest(RequestModel):
    image_ids: list[IdField] = Field(min_length=1, max_length=10_000)
