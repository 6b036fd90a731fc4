"""Label issues: labels a model finds likely wrong, ranked by confident learning (cleanlab).

The probabilities must be out of sample (each image predicted by a model that never trained on it,
see ``flywheel.training.label_quality``): a model that saw a wrong label learns to agree with it. The ranked
list is stored per project, and a selection of it goes back to annotators through the review queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

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
    given_label: str
    suggested_label: str
    score: float


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
        )
        for rank, issue in enumerate(issues, start=1)
    )
    session.flush()


def list_issues(
    session: Session, *, project_id: int, after_rank: int | None, limit: int
) -> list[tuple[LabelIssue, str | None]]:
    """A page of the ranked list, each issue with the image's current label (it may have been fixed since)."""
    query = (
        select(LabelIssue, Image.consensus_label)
        .join(Image, Image.id == LabelIssue.image_id)
        .where(LabelIssue.project_id == project_id)
    )
    if after_rank is not None:
        query = query.where(LabelIssue.rank > after_rank)
    return [(issue, label) for issue, label in session.execute(query.order_by(LabelIssue.rank).limit(limit))]


def send_issues_for_relabel(session: Session, *, project: Project, image_ids: list[int]) -> list[Image]:
    """Ask for an independent label on each image (the review queue, served first), and note it on the issue."""
    images = send_for_review(session, project=project, image_ids=image_ids, reason=RELABEL_REASON)
    now = utcnow()
    for issue in session.scalars(
        select(LabelIssue).where(LabelIssue.project_id == project.id, LabelIssue.image_id.in_([i.id for i in images]))
    ):
        issue.sent_for_review_at = now
    session.flush()
    return images
