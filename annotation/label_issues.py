"""Label issues: labels a model finds likely wrong, ranked by confident learning (cleanlab).

The probabilities must be out of sample (each image predicted by a model that never trained on it,
see ``flywheel.training.label_quality``): a model that saw a wrong label learns to agree with it. The ranked
list is stored per project, and a selection of it goes back to annotators through the review queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from annotation.curation import send_for_review
from storage.models import Image, LabelIssue, Project, utcnow

# cleanlab's ways to pick the flagged set; prune_by_class did best with CNN probabilities on the digits
# (../shared/design/TARGETS.md).
FilterBy = Literal["prune_by_class", "prune_by_noise_rate", "both", "confident_learning", "predicted_neq_given"]
FILTERS: tuple[str, ...] = get_args(FilterBy)
RELABEL_REASON = "a model flagged this label as possibly wrong; an independent label is needed"
# A detection issue's kind (cleanlab's ObjectLab): an object no box marks, a box of the wrong class, a box misplaced.
IssueType = Literal["overlooked", "swap", "badloc"]
ISSUE_TYPES: tuple[str, ...] = get_args(IssueType)
BOX_REASONS = {
    "overlooked": "a model finds a {suggested!r} at x={x:.0f}, y={y:.0f} that no box marks",
    "swap": "a model sees the box labeled {given!r} at x={x:.0f}, y={y:.0f} as a {suggested!r}",
    "badloc": "a model puts the {given!r} boxed at x={x:.0f}, y={y:.0f} elsewhere",
}


@dataclass(frozen=True)
class Issue:
    index: int  # row in the arrays given
    given: int
    suggested: int  # the most probable class other than the given one
    score: float  # label quality in [0, 1]: the out-of-sample probability of the given label; low is bad


def find_issues(labels: np.ndarray, pred_probs: np.ndarray, *, filter_by: str = "prune_by_class") -> list[Issue]:
    """Likely-wrong labels, most likely wrong first. ``labels`` (N,) class indices, ``pred_probs`` (N, K)
    out-of-sample probabilities, every class given at least once."""
    if filter_by not in FILTERS:
        raise ValueError(f"unknown filter {filter_by!r}; use one of {', '.join(FILTERS)}")
    labels = np.asarray(labels)
    if pred_probs.ndim != 2 or labels.shape != (len(pred_probs),):
        raise ValueError("labels must be (N,) and pred_probs (N, K)")
    if len(np.unique(labels)) != pred_probs.shape[1] or labels.min(initial=0) < 0:
        raise ValueError("every class in pred_probs must be given to at least one image")
    from cleanlab.filter import find_label_issues  # imported here: seconds that the API's start need not pay
    from cleanlab.rank import get_label_quality_scores

    flagged = np.flatnonzero(find_label_issues(labels, pred_probs, filter_by=filter_by))
    scores = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    others = pred_probs.copy()
    others[np.arange(len(labels)), labels] = -1.0
    suggested = others.argmax(axis=1)
    ranked = flagged[np.argsort(scores[flagged], kind="stable")]
    return [Issue(int(i), int(labels[i]), int(suggested[i]), float(scores[i])) for i in ranked]


@dataclass(frozen=True)
class FoundIssue:
    image_id: int
    given_label: str  # a detection issue: the box's class ("" for an overlooked object)
    suggested_label: str
    score: float
    issue_type: str | None = None  # detection only (ISSUE_TYPES), with the box it is about and each kind's score
    box: dict[str, float] | None = None
    type_scores: dict[str, float] | None = None


def store_issues(session: Session, *, project_id: int, issues: list[FoundIssue]) -> None:
    """Replace the project's list with a new one, ranked in the order given."""
    session.execute(delete(LabelIssue).where(LabelIssue.project_id == project_id))
    session.add_all(
        LabelIssue(
            project_id=project_id,
            image_id=issue.image_id,
            rank=rank,
            given_label=issue.given_label,
            suggested_label=issue.suggested_label,
            score=issue.score,
            issue_type=issue.issue_type,
            box=issue.box,
            type_scores=issue.type_scores,
        )
        for rank, issue in enumerate(issues, start=1)
    )
    session.flush()


def list_issues(
    session: Session, *, project_id: int, after_rank: int | None, limit: int
) -> list[tuple[LabelIssue, str | None, list[dict[str, Any]] | None]]:
    """A page of the ranked list, each issue with the image's current label or boxes (they may have been fixed
    since)."""
    query = (
        select(LabelIssue, Image.consensus_label, Image.consensus_boxes)
        .join(Image, Image.id == LabelIssue.image_id)
        .where(LabelIssue.project_id == project_id)
    )
    if after_rank is not None:
        query = query.where(LabelIssue.rank > after_rank)
    return [
        (issue, label, boxes) for issue, label, boxes in session.execute(query.order_by(LabelIssue.rank).limit(limit))
    ]


def issue_reason(issue: LabelIssue | None) -> str:
    """What the annotator reviewing the image is told: for boxes, which box and what the model sees."""
    if issue is None or issue.issue_type is None or issue.box is None:
        return RELABEL_REASON
    said = BOX_REASONS[issue.issue_type].format(
        given=issue.given_label, suggested=issue.suggested_label, x=issue.box["x"], y=issue.box["y"]
    )
    return f"{said}; check the boxes"


def send_issues_for_relabel(session: Session, *, project: Project, image_ids: list[int]) -> list[Image]:
    """Ask for an independent label on each image (the review queue, served first) with the issue's reason, and
    note it on the issue."""
    ids = list(dict.fromkeys(image_ids))
    issues = {
        issue.image_id: issue
        for issue in session.scalars(
            select(LabelIssue).where(LabelIssue.project_id == project.id, LabelIssue.image_id.in_(ids))
        )
    }
    images = []
    now = utcnow()
    for image_id in ids:
        issue = issues.get(image_id)
        images += send_for_review(session, project=project, image_ids=[image_id], reason=issue_reason(issue))
        if issue is not None:
            issue.sent_for_review_at = now
    session.flush()
    return images
