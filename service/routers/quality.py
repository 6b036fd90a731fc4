from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse

from annotation.consensus import ConsensusSummary, update_project_consensus, weak_box_consensus, weak_consensus
from annotation.exclusions import exclude_annotator, list_exclusions, revoke_exclusion
from annotation.label_issues import list_issues, send_issues_for_relabel
from flywheel.quality import Report, quality_report, recompute_reports_soon
from service.deps import (
    AdminProjectForWrite,
    CurrentUser,
    EngineerProject,
    EngineerProjectForWrite,
    ReadSessionDep,
    Runtime,
    RuntimeDep,
    SessionDep,
)
from service.schemas.common import ERROR_RESPONSES, MAX_ID, Limit, UserId
from service.schemas.labeling import BoxRead, ReviewResult
from service.schemas.quality import (
    AgreementRead,
    AnswerBoxesRead,
    BoxAgreementRead,
    BoxScorecardsRead,
    ConsensusSummaryRead,
    ExclusionChange,
    ExclusionCreate,
    ExclusionRead,
    LabelIssueRead,
    LabelIssuesPage,
    QualityReportPending,
    RelabelRequest,
    ReportRead,
    ScorecardsRead,
    WeakBoxImageRead,
    WeakBoxImagesPage,
    WeakImageRead,
    WeakImagesPage,
)
from storage.models import Project, TaskType

router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["label quality"], responses=ERROR_RESPONSES)

After = Annotated[int | None, Query(ge=0, le=MAX_ID, description="Return items after this one.")]


def _summary(summary: ConsensusSummary) -> ConsensusSummaryRead:
    return ConsensusSummaryRead(**asdict(summary))


PENDING: dict[int | str, dict[str, Any]] = {
    status.HTTP_202_ACCEPTED: {
        "model": QualityReportPending,
        "description": "A large project's first report is being computed by the job named; ask again when it ends.",
    }
}


def _report(runtime: Runtime, project: Project, kind: str) -> Report | JSONResponse:
    found = quality_report(
        runtime.db,
        runtime.transport,
        project_id=project.id,
        kind=kind,
        sync_labels=runtime.settings.quality_sync_labels,
    )
    if isinstance(found, Report):
        return found
    message = f"the first quality report of project {project.id} is being computed by job {found}; ask again then"
    pending = QualityReportPending(job_id=found, message=message)
    return JSONResponse(pending.model_dump(), status_code=status.HTTP_202_ACCEPTED)


def _with_freshness(found: Report) -> dict[str, Any]:
    report = ReportRead(**asdict(found.freshness), recompute_job_id=found.job_id)
    return {**found.payload, "report": report}


@router.get(
    "/agreement",
    summary="Inter-annotator agreement on overlapped images (admin, engineer)",
    response_model=AgreementRead | BoxAgreementRead,
    responses=PENDING,
)
def agreement(project: EngineerProject, runtime: RuntimeDep) -> Any:
    """Percent agreement, Fleiss' kappa and Krippendorff's alpha over images labeled by several annotators, per
    class and per pair of annotators (Cohen's kappa), each with a plain-language reading, or the reason when there
    is too little overlap to say. For a detection project: per pair of annotators and pooled, their boxes matched
    one to one by IoU, with box precision, recall, F1, mean IoU and label agreement, overall and per class.

    The figures are a stored report (`report` says when it was computed, over which labels, and whether newer
    ones exist): a `quality_report` job recomputes it as labels arrive, on a schedule or on request. A project's
    first request computes it at once up to `LABELWHEEL_QUALITY_SYNC_LABELS` labels, else answers 202 naming the job
    computing it."""
    found = _report(runtime, project, "agreement")
    if isinstance(found, JSONResponse):
        return found
    schema = BoxAgreementRead if project.task_type == TaskType.detection else AgreementRead
    return schema.model_validate(_with_freshness(found))


@router.get(
    "/annotators",
    summary="Scorecards: speed, accuracy, agreement, confusion and flags (admin, engineer)",
    response_model=ScorecardsRead | BoxScorecardsRead,
    responses=PENDING,
)
def annotators(project: EngineerProject, runtime: RuntimeDep) -> Any:
    """One scorecard per annotator: labels, speed, gold accuracy, agreement with consensus, accuracy on checked
    labels, their confusion matrix under Dawid-Skene, and flags with their evidence (`unreliable`, `random`,
    `systematic_confusion`). For a detection project: their boxes against the consensus boxes of images others
    answered too and against gold boxes, apart: recall, precision, missed objects, extra, loose and confused boxes,
    merges (one box around several objects), and flags (`missed_objects`, `extra_boxes`, `loose_boxes`,
    `class_confusion`, `merges`) once enough images are scored.

    A stored report like `/agreement`'s (see there); an exclusion shows in it at once, its figures follow with the
    recompute that the exclusion starts."""
    found = _report(runtime, project, "annotators")
    if isinstance(found, JSONResponse):
        return found
    schema = BoxScorecardsRead if project.task_type == TaskType.detection else ScorecardsRead
    return schema.model_validate(_with_freshness(found))


@router.post(
    "/annotators/{user_id}/exclusion",
    status_code=status.HTTP_201_CREATED,
    summary="Leave an annotator's labels out of consensus, recorded and reversible (admin)",
)
def exclude(
    project: AdminProjectForWrite,
    user_id: UserId,
    body: ExclusionCreate,
    session: SessionDep,
    principal: CurrentUser,
    runtime: RuntimeDep,
) -> ExclusionChange:
    """Leaves the annotator's labels out of consensus from now on, with the reason recorded; images they labeled are
    relabeled from the remaining votes. Reversible with DELETE."""
    exclusion, summary = exclude_annotator(
        session, project=project, annotator_id=user_id, reason=body.reason, by=principal
    )
    recompute_reports_soon(session, project_id=project.id, transport=runtime.transport, trigger="exclusion")
    return ExclusionChange(exclusion=ExclusionRead.model_validate(exclusion), consensus=_summary(summary))


@router.delete("/annotators/{user_id}/exclusion", summary="Count an excluded annotator's labels again (admin)")
def include(
    project: AdminProjectForWrite, user_id: UserId, session: SessionDep, principal: CurrentUser, runtime: RuntimeDep
) -> ExclusionChange:
    """Ends the exclusion: the annotator's labels count in consensus again. The exclusion stays in the history,
    marked revoked."""
    exclusion, summary = revoke_exclusion(session, project=project, annotator_id=user_id, by=principal)
    recompute_reports_soon(session, project_id=project.id, transport=runtime.transport, trigger="exclusion")
    return ExclusionChange(exclusion=ExclusionRead.model_validate(exclusion), consensus=_summary(summary))


@router.get("/exclusions", summary="Every exclusion of the project, revoked ones included (admin, engineer)")
def exclusions(project: EngineerProject, session: ReadSessionDep) -> list[ExclusionRead]:
    """Who was excluded, when, by whom and why, oldest first, revoked exclusions included."""
    return [ExclusionRead.model_validate(e) for e in list_exclusions(session, project_id=project.id)]


@router.post("/consensus", summary="Refit Dawid-Skene consensus and rewrite every image's label (admin, engineer)")
def consensus(project: EngineerProjectForWrite, session: SessionDep, runtime: RuntimeDep) -> ConsensusSummaryRead:
    """Fits Dawid-Skene on every current label (majority vote when there is too little overlap to fit) and rewrites
    each image's label and its probability; images whose consensus is weak are sent to one more annotator, up to
    `review_max_labels`. In a detection project: fits Dawid-Skene on the classes of boxes two or more annotators
    outlined and recomputes every image's consensus boxes. Runs in the request; returns what changed."""
    summary = update_project_consensus(session, project.id)
    recompute_reports_soon(session, project_id=project.id, transport=runtime.transport, trigger="consensus refit")
    return _summary(summary)


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
