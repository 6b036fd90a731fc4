from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, status

from annotation.agreement import MIN_SHARED_ITEMS, Figure
from annotation.box_scorecards import BoxScorecards, box_scorecards
from annotation.boxes import BoxScorecard
from annotation.consensus import ConsensusSummary, update_project_consensus, weak_box_consensus, weak_consensus
from annotation.exclusions import exclude_annotator, list_exclusions, revoke_exclusion
from annotation.label_issues import list_issues, send_issues_for_relabel
from annotation.reports import BoxAgreementReport, agreement_report, box_agreement_report
from annotation.scorecards import MIN_GOLD, MIN_OVERLAPPED, annotator_scorecards
from service.deps import (
    AdminProjectForWrite,
    CurrentUser,
    EngineerProject,
    EngineerProjectForWrite,
    ReadSessionDep,
    SessionDep,
)
from service.schemas.common import ERROR_RESPONSES, MAX_ID, Limit, UserId
from service.schemas.labeling import BoxRead, ReviewResult
from service.schemas.quality import (
    AgreementRead,
    AnnotatorPairBoxAgreementRead,
    AnnotatorRef,
    AnswerBoxesRead,
    BoxAgreementRead,
    BoxAnnotatorScorecardRead,
    BoxConfusionRead,
    BoxPairAgreementRead,
    BoxScorecardRead,
    BoxScorecardsRead,
    ClassAgreementRead,
    ConsensusSummaryRead,
    ExclusionChange,
    ExclusionCreate,
    ExclusionInfo,
    ExclusionRead,
    FigureRead,
    FlagRead,
    HumanReferenceRead,
    LabelIssueRead,
    LabelIssuesPage,
    PairAgreementRead,
    RelabelRequest,
    ScorecardRead,
    ScorecardsRead,
    SpeedRead,
    WeakBoxImageRead,
    WeakBoxImagesPage,
    WeakImageRead,
    WeakImagesPage,
)
from storage.models import TaskType

router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["label quality"], responses=ERROR_RESPONSES)

After = Annotated[int | None, Query(ge=0, le=MAX_ID, description="Return items after this one.")]


def _figure(figure: Figure) -> FigureRead:
    return FigureRead(**asdict(figure))


def _box_agreement(report: BoxAgreementReport, *, labels: list[str]) -> BoxAgreementRead:
    ref = {a: AnnotatorRef(id=a, name=report.names.get(a, f"user {a}")) for a in report.annotators}
    return BoxAgreementRead(
        labels=labels,
        annotators=list(ref.values()),
        excluded_annotators=report.excluded_annotators,
        iou_threshold=report.iou_threshold,
        images=report.images,
        reason=report.reason,
        overall=None if report.overall is None else BoxPairAgreementRead.model_validate(asdict(report.overall)),
        pairs=[
            AnnotatorPairBoxAgreementRead(annotator_a=ref[a], annotator_b=ref[b], **asdict(figures))
            for a, b, figures in report.pairs
        ],
    )


def _box_card(card: BoxScorecard | None) -> BoxScorecardRead | None:
    if card is None:
        return None
    confusions = sorted(card.confusions.items(), key=lambda item: (-item[1], item[0]))
    return BoxScorecardRead(
        **{k: v for k, v in asdict(card).items() if k not in ("confusions", "flags")},
        recall=card.recall,
        precision=card.precision,
        confusions=[BoxConfusionRead(expected=e, given=g, boxes=n) for (e, g), n in confusions],
        flags=[FlagRead(**asdict(f)) for f in card.flags],
    )


def _box_scorecards(cards: BoxScorecards, *, labels: list[str]) -> BoxScorecardsRead:
    return BoxScorecardsRead(
        labels=labels,
        iou_threshold=cards.iou_threshold,
        tight_iou=cards.tight_iou,
        min_images=cards.min_images,
        annotators=[
            BoxAnnotatorScorecardRead(
                annotator_id=c.annotator_id,
                name=c.name,
                member=c.member,
                excluded=c.exclusion is not None,
                exclusion=ExclusionInfo(**asdict(c.exclusion)) if c.exclusion else None,
                answers=c.answers,
                boxes=c.boxes,
                speed=SpeedRead(**asdict(c.speed)),
                against_consensus=_box_card(c.against_consensus),
                against_gold=_box_card(c.against_gold),
            )
            for c in cards.annotators
        ],
    )


def _summary(summary: ConsensusSummary) -> ConsensusSummaryRead:
    return ConsensusSummaryRead(**asdict(summary))


@router.get("/agreement", summary="Inter-annotator agreement on overlapped images (admin, engineer)")
def agreement(project: EngineerProject, session: ReadSessionDep) -> AgreementRead | BoxAgreementRead:
    """Percent agreement, Fleiss' kappa and Krippendorff's alpha over images labeled by several annotators, per
    class and per pair of annotators (Cohen's kappa), each with a plain-language reading, or the reason when there
    is too little overlap to say. For a detection project: per pair of annotators and pooled, their boxes matched
    one to one by IoU, with box precision, recall, F1, mean IoU and label agreement, overall and per class."""
    if project.task_type == TaskType.detection:
        return _box_agreement(box_agreement_report(session, project=project), labels=list(project.labels))
    report = agreement_report(session, project=project)
    figures = report.agreement
    ref = [AnnotatorRef(id=a, name=report.names.get(a, f"user {a}")) for a in report.annotators]
    return AgreementRead(
        labels=report.labels,
        annotators=ref,
        excluded_annotators=report.excluded_annotators,
        reason=report.reason,
        items=figures.items,
        percent_agreement=_figure(figures.percent_agreement),
        unanimous=figures.unanimous,
        fleiss_kappa=_figure(figures.fleiss_kappa),
        krippendorff_alpha=_figure(figures.krippendorff_alpha),
        per_class=[
            ClassAgreementRead(
                label=report.labels[c.label],
                ratings=c.ratings,
                fleiss_kappa=_figure(c.fleiss_kappa),
                krippendorff_alpha=_figure(c.krippendorff_alpha),
            )
            for c in figures.per_class
        ],
        pairs=[
            PairAgreementRead(
                annotator_a=ref[p.first],
                annotator_b=ref[p.second],
                shared=p.shared,
                percent_agreement=p.percent_agreement,
                cohen_kappa=_figure(p.cohen_kappa),
            )
            for p in figures.pairs
        ],
        pairs_below_minimum=figures.pairs_below_minimum,
        min_shared_items=MIN_SHARED_ITEMS,
        human_reference=HumanReferenceRead(**asdict(report.human_reference)),
    )


@router.get("/annotators", summary="Scorecards: speed, accuracy, agreement, confusion and flags (admin, engineer)")
def annotators(project: EngineerProject, session: ReadSessionDep) -> ScorecardsRead | BoxScorecardsRead:
    """One scorecard per annotator: labels, speed, gold accuracy, agreement with consensus, accuracy on checked
    labels, their confusion matrix under Dawid-Skene, and flags with their evidence (`unreliable`, `random`,
    `systematic_confusion`). For a detection project: their boxes against the consensus boxes of images others
    answered too and against gold boxes, apart: recall, precision, missed objects, extra, loose and confused boxes,
    merges (one box around several objects), and flags (`missed_objects`, `extra_boxes`, `loose_boxes`,
    `class_confusion`, `merges`) once enough images are scored."""
    if project.task_type == TaskType.detection:
        return _box_scorecards(box_scorecards(session, project=project), labels=list(project.labels))
    cards = annotator_scorecards(session, project=project)
    return ScorecardsRead(
        consensus_method=cards.method.value,
        reason=cards.reason,
        labels=cards.labels,
        crowd_accuracy=cards.crowd_accuracy,
        min_gold_answers=MIN_GOLD,
        min_overlapped_labels=MIN_OVERLAPPED,
        annotators=[
            ScorecardRead(
                annotator_id=c.annotator_id,
                name=c.name,
                member=c.member,
                excluded=c.exclusion is not None,
                exclusion=ExclusionInfo(**asdict(c.exclusion)) if c.exclusion else None,
                labels=c.labels,
                speed=SpeedRead(**asdict(c.speed)),
                gold_answered=c.gold_answered,
                gold_correct=c.gold_correct,
                gold_accuracy=c.gold_accuracy,
                overlapped_labels=c.overlapped_labels,
                agreement_with_consensus=c.agreement_with_consensus,
                checked_labels=c.checked_labels,
                checked_accuracy=c.checked_accuracy,
                kappa=c.kappa,
                estimated_accuracy=c.estimated_accuracy,
                confusion=c.confusion,
                flags=[FlagRead(**asdict(f)) for f in c.flags],
            )
            for c in cards.annotators
        ],
    )


@router.post(
    "/annotators/{user_id}/exclusion",
    status_code=status.HTTP_201_CREATED,
    summary="Leave an annotator's labels out of consensus, recorded and reversible (admin)",
)
def exclude(
    project: AdminProjectForWrite, user_id: UserId, body: ExclusionCreate, session: SessionDep, principal: CurrentUser
) -> ExclusionChange:
    """Leaves the annotator's labels out of consensus from now on, with the reason recorded; images they labeled are
    relabeled from the remaining votes. Reversible with DELETE."""
    exclusion, summary = exclude_annotator(
        session, project=project, annotator_id=user_id, reason=body.reason, by=principal
    )
    return ExclusionChange(exclusion=ExclusionRead.model_validate(exclusion), consensus=_summary(summary))


@router.delete("/annotators/{user_id}/exclusion", summary="Count an excluded annotator's labels again (admin)")
def include(
    project: AdminProjectForWrite, user_id: UserId, session: SessionDep, principal: CurrentUser
) -> ExclusionChange:
    """Ends the exclusion: the annotator's labels count in consensus again. The exclusion stays in the history,
    marked revoked."""
    exclusion, summary = revoke_exclusion(session, project=project, annotator_id=user_id, by=principal)
    return ExclusionChange(exclusion=ExclusionRead.model_validate(exclusion), consensus=_summary(summary))


@router.get("/exclusions", summary="Every exclusion of the project, revoked ones included (admin, engineer)")
def exclusions(project: EngineerProject, session: ReadSessionDep) -> list[ExclusionRead]:
    """Who was excluded, when, by whom and why, oldest first, revoked exclusions included."""
    return [ExclusionRead.model_validate(e) for e in list_exclusions(session, project_id=project.id)]


@router.post("/consensus", summary="Refit Dawid-Skene consensus and rewrite every image's label (admin, engineer)")
def consensus(project: EngineerProjectForWrite, session: SessionDep) -> ConsensusSummaryRead:
    """Fits Dawid-Skene on every current label (majority vote when there is too little overlap to fit) and rewrites
    each image's label and its probability; images whose consensus is weak are sent to one more annotator, up to
    `review_max_labels`. In a detection project: fits Dawid-Skene on the classes of boxes two or more annotators
    outlined and recomputes every image's consensus boxes. Runs in the request; returns what changed."""
    return _summary(update_project_consensus(session, project.id))


@router.get(
    "/consensus/weak",
    summary="Images whose consensus stayed weak after automatic review; resolve one with PUT /gold (admin, engineer)",
)
def weak(
    project: EngineerProject, session: ReadSessionDep, after: After = None, limit: Limit = 100
) -> WeakImagesPage | WeakBoxImagesPage:
    """Images whose consensus stayed weak (a tie or a low posterior) after automatic review asked for all the labels
    it may, with their votes. Resolve one by giving the answer with `PUT .../gold`. In a detection project: images
    whose consensus boxes stayed weak, with the reasons and each annotator's boxes; resolve one with gold boxes."""
    if project.task_type == TaskType.detection:
        weak_boxes = weak_box_consensus(session, project=project, after=after, limit=limit)
        return WeakBoxImagesPage(
            items=[
                WeakBoxImageRead(
                    image_id=w.image.id,
                    boxes=None if w.image.consensus_boxes is None else [BoxRead(**b) for b in w.image.consensus_boxes],
                    reasons=w.weak,
                    label_count=w.image.label_count,
                    answers=[
                        AnswerBoxesRead(annotator_id=a, boxes=[BoxRead(**b) for b in boxes])
                        for a, boxes in sorted(w.answers.items())
                    ],
                )
                for w in weak_boxes
            ],
            next_after=weak_boxes[-1].image.id if len(weak_boxes) == limit else None,
        )
    items = weak_consensus(session, project=project, after=after, limit=limit)
    return WeakImagesPage(
        items=[
            WeakImageRead(
                image_id=image.id,
                label=image.consensus_label,
                posterior=image.consensus_posterior,
                tie=image.consensus_tie,
                label_count=image.label_count,
                votes=votes,
            )
            for image, votes in items
        ],
        next_after=items[-1][0].id if len(items) == limit else None,
    )


@router.get("/label-issues", summary="Labels a cross-validated model finds likely wrong, worst first (admin, engineer)")
def label_issues(
    project: EngineerProject,
    session: ReadSessionDep,
    after_rank: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Return issues ranked after this.")] = None,
    limit: Limit = 100,
) -> LabelIssuesPage:
    """The result of the newest `label_quality` job: labels that a cross-validated model finds likely wrong, worst
    first, with the label it suggests; in a detection project, images whose boxes look wrong, each with the kind of
    error (overlooked, swap, badloc) and the box in question. Empty until such a job has run. Page with
    `after_rank`."""
    items = list_issues(session, project_id=project.id, after_rank=after_rank, limit=limit)
    return LabelIssuesPage(
        items=[
            LabelIssueRead(
                rank=issue.rank,
                image_id=issue.image_id,
                given_label=issue.given_label,
                suggested_label=issue.suggested_label,
                score=issue.score,
                issue_type=issue.issue_type,
                box=issue.box,
                type_scores=issue.type_scores,
                current_label=current,
                current_boxes=boxes,
                sent_for_review_at=issue.sent_for_review_at,
                found_at=issue.created_at,
            )
            for issue, current, boxes in items
        ],
        next_after_rank=items[-1][0].rank if len(items) == limit else None,
    )


@router.post("/label-issues/relabel", summary="Send images to the review queue for a new label (admin, engineer)")
def relabel(project: EngineerProjectForWrite, body: RelabelRequest, session: SessionDep) -> ReviewResult:
    """Sends the images back to the review queue, to an annotator who has not labeled them, with the reason that a
    model doubts their label (for boxes: which box, and what the model sees there)."""
    images = send_issues_for_relabel(session, project=project, image_ids=body.image_ids)
    return ReviewResult(queued=[i.id for i in images if i.queue_tier is not None])
