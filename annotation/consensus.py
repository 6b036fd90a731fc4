"""Each image's current label: Dawid-Skene when the overlap supports it, majority vote otherwise.

Two paths keep ``images.consensus_label`` current. ``update_project_consensus`` refits Dawid-Skene
on every current label and rewrites every image (training calls it before each snapshot); between
fits, each submission recomputes its one image from the stored confusion matrices
(``refresh_consensus``), a few rows. Either way an image whose consensus is weak (a tie, a low
posterior, no usable label) is sent to one more annotator, up to the project's cap.

Detection images get their current boxes (``images.consensus_boxes``) the same two ways: the gold boxes, else
the consensus of the counted annotators' boxes (``annotation.boxes.consensus_boxes``: boxes clustered across
annotators, kept when a quorum drew them, median outlines), each box's class by vote until a refit has
fitted Dawid-Skene on the classes of boxes two or more annotators outlined, by its posterior afterwards; a
weak consensus is sent to one more annotator the same way.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from annotation.boxes import Box, BoxConsensus, ClassPicker, consensus_boxes
from annotation.crowd import Crowd, excluded_annotators, load_crowd
from annotation.dawid_skene import DawidSkeneFit, dawid_skene, one_coin, posterior_from_skills
from annotation.queue import annotator_members, labels_wanted, place_in_queue
from annotation.report_marks import mark_reports_outdated
from storage.models import (
    Annotation,
    AnnotatorExclusion,
    AnnotatorSkill,
    ConsensusFit,
    Image,
    Project,
    TaskType,
    utcnow,
)
from storage.projects import ProjectSettings, project_settings, require_classification

# Dawid-Skene learns K x K numbers per annotator: below this much overlap (images with two usable
# labels or a gold answer) its estimates are noise, and majority vote is the honest answer.
MIN_CHECKED_ITEMS = 20
MAX_DAWID_SKENE_CLASSES = 100  # (W, K, K) matrices and (N, K) posteriors must stay small
SMOOTHING = 0.01  # pseudo-count per confusion cell: thin evidence never makes an answer impossible
TIE_TOLERANCE = 1e-9

# Shown to the next annotator: neutral on purpose, so it does not hint at any label.
WEAK_NO_LABEL = "the labels given so far do not count; an independent label is needed"
WEAK_TIE = "annotators disagree; an independent label is needed"
WEAK_POSTERIOR = "the label is uncertain; an independent label is needed"
WEAK_BOXES = "the boxes drawn so far disagree; independent boxes are needed"


class Method(enum.StrEnum):
    dawid_skene = "dawid_skene"
    majority = "majority"


@dataclass(frozen=True)
class Vote:
    label: str | None
    tie: bool
    votes: int


def majority_vote(labels: Sequence[str], label_order: Sequence[str]) -> Vote:
    """The most frequent label; a tie goes to the label listed first in the project's label set.

    Ties are resolved deterministically (the same votes always give the same answer) and flagged,
    so they can be sent for review.
    """
    if not labels:
        return Vote(label=None, tie=False, votes=0)
    counts = Counter(labels)
    best = max(counts.values())
    tied = [label for label, n in counts.items() if n == best]
    rank = {label: i for i, label in enumerate(label_order)}
    winner = min(tied, key=lambda label: (rank.get(label, len(rank)), label))
    return Vote(label=winner, tie=len(tied) > 1, votes=best)


@dataclass(frozen=True)
class Consensus:
    crowd: Crowd
    method: Method
    reason: str | None  # why majority vote was used
    label: np.ndarray  # (N,) class index, -1 where the item has no usable label
    posterior: np.ndarray  # (N,) P(label is right); NaN under majority vote (1 for gold either way)
    tie: np.ndarray  # (N,) bool
    majority: np.ndarray  # (N,) majority-vote class for comparison, -1 where none
    # (W, K, K) expected counts of (true class, answer) per annotator, excluded ones measured against
    # the others' consensus; None under majority vote.
    counts: np.ndarray | None
    priors: np.ndarray | None
    iterations: int

    @property
    def confusion(self) -> np.ndarray | None:
        """(W, K, K): P(annotator answers l | true class k), rows k."""
        if self.counts is None:
            return None
        smoothed = self.counts + SMOOTHING
        return smoothed / smoothed.sum(axis=2, keepdims=True)

    def accuracy(self) -> np.ndarray | None:
        """(W,) Dawid-Skene's expected share of each annotator's labels that are right."""
        if self.counts is None:
            return None
        totals = self.counts.sum(axis=(1, 2))
        return np.trace(self.counts, axis1=1, axis2=2) / np.maximum(totals, 1e-12)


def why_majority(crowd: Crowd) -> str | None:
    """The reason Dawid-Skene cannot be trusted on this crowd yet, or None when it can."""
    if crowd.n_classes > MAX_DAWID_SKENE_CLASSES:
        return f"Dawid-Skene is used for up to {MAX_DAWID_SKENE_CLASSES} labels; this project has {crowd.n_classes}"
    annotators = len(np.unique(crowd.worker[crowd.usable]))
    if annotators < 2:
        return f"needs two annotators; {annotators} has labeled (excluded ones left out)"
    checked = int((crowd.overlapped | (crowd.gold >= 0)).sum())
    if checked < MIN_CHECKED_ITEMS:
        return (
            f"only {checked} images have labels from two annotators or a gold answer; "
            f"Dawid-Skene needs {MIN_CHECKED_ITEMS}"
        )
    return None


def compute_consensus(crowd: Crowd) -> Consensus:
    """Consensus over the crowd's usable labels, with majority vote alongside for comparison."""
    votes, gold = crowd.votes, crowd.gold
    known = gold >= 0
    has_label = votes.sum(axis=1) > 0
    majority = np.where(has_label, votes.argmax(axis=1), -1)  # argmax: first in label order on a tie
    majority_tie = has_label & ((votes == votes.max(axis=1, keepdims=True)).sum(axis=1) > 1) & ~known
    majority = np.where(known, gold, majority)
    reason = why_majority(crowd)
    if reason is not None:
        posterior = np.where(known, 1.0, np.nan)
        return Consensus(crowd, Method.majority, reason, majority, posterior, majority_tie, majority, None, None, 0)

    fitted = np.flatnonzero(has_label | known)
    position = np.full(crowd.n_items, -1)
    position[fitted] = np.arange(len(fitted))
    keep = crowd.usable
    fit = dawid_skene(
        position[crowd.item[keep]],
        crowd.worker[keep],
        crowd.label[keep],
        n_items=len(fitted),
        n_workers=crowd.n_workers,
        n_classes=crowd.n_classes,
        gold=gold[fitted],
        smoothing=SMOOTHING,
    )
    label = np.full(crowd.n_items, -1)
    posterior = np.full(crowd.n_items, np.nan)
    tie = np.zeros(crowd.n_items, dtype=bool)
    ordered = np.sort(fit.posteriors, axis=1)
    label[fitted] = fit.labels
    posterior[fitted] = ordered[:, -1]
    tie[fitted] = (ordered[:, -1] - ordered[:, -2] < TIE_TOLERANCE) & ~known[fitted]
    # Excluded annotators get no say, but are still measured against everyone else's consensus.
    counts = fit.counts.copy()
    others = ~crowd.usable & (position[crowd.item] >= 0)
    flat = np.zeros((crowd.n_workers * crowd.n_classes, crowd.n_classes))
    answer = crowd.worker[others] * crowd.n_classes + crowd.label[others]
    np.add.at(flat, answer, fit.posteriors[position[crowd.item[others]]])
    counts += flat.reshape(crowd.n_workers, crowd.n_classes, crowd.n_classes).transpose(0, 2, 1)
    return Consensus(
        crowd, Method.dawid_skene, None, label, posterior, tie, majority, counts, fit.priors, fit.iterations
    )


def _weakness(label: str | None, posterior: float | None, tie: bool, threshold: float) -> str | None:
    if label is None:
        return WEAK_NO_LABEL
    if tie:
        return WEAK_TIE
    if posterior is not None and posterior < threshold:
        return WEAK_POSTERIOR
    return None


def _settle(image: Image, settings: ProjectSettings, *, annotators: int) -> bool:
    """Ask for one more label if the image has all it can get and its consensus is still weak; then
    place it in the queue. True when it was sent for another label."""
    sent = False
    weak = _weakness(image.consensus_label, image.consensus_posterior, image.consensus_tie, settings.review_posterior)
    image.consensus_weak = image.label_count > 0 and image.gold_label is None and weak is not None
    has_all = image.label_count >= labels_wanted(image, annotators=annotators)
    if settings.auto_review and image.gold_label is None and has_all:
        if weak is not None and image.label_count < settings.review_max_labels:
            image.labels_needed, image.review_reason, sent = image.label_count + 1, weak, True
    place_in_queue(image, annotators=annotators)
    return sent and image.queue_tier is not None


def _counted(session: Session, *, project_id: int, answers: dict[int, Any]) -> dict[int, Any]:
    """The answers whose annotators are not excluded from consensus, by annotator."""
    if answers:
        excluded = session.scalars(
            select(AnnotatorExclusion.annotator_id).where(
                AnnotatorExclusion.project_id == project_id,
                AnnotatorExclusion.annotator_id.in_(answers),
                AnnotatorExclusion.revoked_at.is_(None),
            )
        )
        for annotator_id in excluded:
            answers.pop(annotator_id, None)
    return answers


def image_box_consensus(
    project: Project,
    answers: Mapping[int, Sequence[Mapping[str, Any]]],
    settings: ProjectSettings | None = None,
    pick_class: ClassPicker | None = None,
) -> BoxConsensus:
    """Consensus boxes of one image from its counted annotators' answers ({annotator: boxes}), under the
    project's quorum and IoU threshold; classes by ``pick_class`` (the fitted skills), else by vote."""
    settings = settings or project_settings(project)
    quorum = min(settings.box_quorum, len(answers)) if settings.box_quorum and answers else None
    return consensus_boxes(  # annotators by id: the same answers give the same boxes whatever order rows come in
        {annotator: [Box(**box) for box in answers[annotator]] for annotator in sorted(answers)},
        quorum=quorum,
        iou_threshold=settings.iou_threshold,
        label_order=project.labels,
        pick_class=pick_class,
    )


def _box_picker(session: Session, *, project: Project, annotator_ids: Sequence[int]) -> ClassPicker | None:
    """A box's class as Dawid-Skene's most probable one given who answered what, from the project's last box fit
    (``posterior_from_skills``, the rule for a classification label between fits); None without a fit."""
    fit = session.get(ConsensusFit, project.id) if annotator_ids else None
    if fit is None:
        return None
    skills: dict[Hashable, np.ndarray] = {
        s.annotator_id: np.asarray(s.confusion)
        for s in session.scalars(
            select(AnnotatorSkill).where(
                AnnotatorSkill.project_id == project.id, AnnotatorSkill.annotator_id.in_(annotator_ids)
            )
        )
    }
    class_of = {label: k for k, label in enumerate(project.labels)}
    newcomer, priors = one_coin(fit.default_accuracy, len(project.labels)), np.asarray(fit.priors)

    def pick(votes: Sequence[tuple[Hashable, str]]) -> tuple[str, bool]:
        answers = [(skills.get(annotator, newcomer), class_of[label]) for annotator, label in votes]
        ordered = np.sort(posterior := posterior_from_skills(answers, priors))
        return project.labels[int(posterior.argmax())], bool(ordered[-1] - ordered[-2] < TIE_TOLERANCE)

    return pick


def _settle_boxes(
    project: Project,
    settings: ProjectSettings,
    image: Image,
    answers: Mapping[int, Sequence[Mapping[str, Any]]],
    *,
    annotators: int,
    pick_class: ClassPicker | None,
) -> None:
    """Set a detection image's current boxes from its counted annotators' answers, or its gold boxes.

    A weak consensus (a box drawn by just a quorum or by exactly half of them, a tied class, outlines
    that agree little, a box kept only by votes of boxes around it and a neighbour) is marked with
    ``consensus_tie``; once the image has every answer it asked for, it asks for one more, as a tie
    does in classification, up to ``review_max_labels``; so does an image whose answers all stopped
    counting (their annotators were excluded). Then the image takes its place in the queue.
    """
    image.consensus_label, image.consensus_tie, image.consensus_posterior = None, False, None
    image.consensus_boxes = None
    weak = False
    if image.gold_boxes is not None:
        image.consensus_boxes, image.consensus_posterior = image.gold_boxes, 1.0
    elif len(answers) == 1 and pick_class is None:  # one annotator's boxes are the consensus, as drawn
        image.consensus_boxes = [dict(box) for box in next(iter(answers.values()))]
    elif answers:
        result = image_box_consensus(project, answers, settings, pick_class)
        image.consensus_boxes = [asdict(c.box) for c in result.boxes]
        image.consensus_tie = weak = bool(result.weak)
    else:
        image.consensus_tie = weak = image.label_count > 0  # answered, but no answer counts
    image.consensus_weak = weak
    has_all = image.label_count >= labels_wanted(image, annotators=annotators)
    if settings.auto_review and has_all and weak and image.label_count < settings.review_max_labels:
        image.labels_needed, image.review_reason = image.label_count + 1, WEAK_BOXES
    place_in_queue(image, annotators=annotators)


@dataclass(frozen=True)
class _BoxClassFit:
    annotator_ids: list[int]  # in the fit's worker order
    answers: np.ndarray  # (W,) outlines of each annotator behind the fit
    fit: DawidSkeneFit


def _fit_box_classes(
    project: Project, settings: ProjectSettings, answers: Mapping[int, Mapping[int, Sequence[Mapping[str, Any]]]]
) -> tuple[_BoxClassFit | None, str | None]:
    """Dawid-Skene on the classes of consensus boxes that two annotators or more outlined: each such box is an
    item, each outline's class an answer. Returns the fit, or None and why there is none."""
    items: list[int] = []
    workers: list[int] = []
    classes: list[int] = []
    class_of = {label: k for k, label in enumerate(project.labels)}
    n_items = 0
    for by_annotator in answers.values():
        if len(by_annotator) < 2:
            continue
        for box in image_box_consensus(project, by_annotator, settings).boxes:
            if len(box.annotators) < 2:
                continue
            items += [n_items] * len(box.annotators)
            workers += [int(str(a)) for a in box.annotators]
            classes += [class_of[c] for c in box.classes]
            n_items += 1
    ids = sorted(set(workers))
    if len(project.labels) > MAX_DAWID_SKENE_CLASSES:
        return None, f"Dawid-Skene is used for up to {MAX_DAWID_SKENE_CLASSES} labels; this project has more"
    if len(ids) < 2 or n_items < MIN_CHECKED_ITEMS:
        return None, (
            f"only {n_items} boxes were outlined by two annotators or more; Dawid-Skene needs {MIN_CHECKED_ITEMS}"
        )
    worker = np.searchsorted(ids, workers)
    fit = dawid_skene(
        np.array(items),
        worker,
        np.array(classes),
        n_items=n_items,
        n_workers=len(ids),
        n_classes=len(project.labels),
        smoothing=SMOOTHING,
    )
    return _BoxClassFit(ids, np.bincount(worker, minlength=len(ids)), fit), None


def _store_box_fit(
    session: Session, *, project: Project, fitted: _BoxClassFit | None, images: int, overlapped: int
) -> None:
    """Keep the box-class fit that ``refresh_consensus`` reads between refits; none under plain vote."""
    session.execute(delete(AnnotatorSkill).where(AnnotatorSkill.project_id == project.id))
    row = session.get(ConsensusFit, project.id)
    if fitted is None:
        if row is not None:
            session.delete(row)
        return
    fit = fitted.fit
    row = row or ConsensusFit(project_id=project.id)
    row.priors = fit.priors.tolist()
    row.default_accuracy = float(np.trace(fit.counts.sum(axis=0)) / max(fit.counts.sum(), 1e-12))
    row.images, row.overlapped_images, row.iterations, row.fitted_at = images, overlapped, fit.iterations, utcnow()
    session.add(row)
    accuracy = fit.accuracy()
    session.add_all(
        AnnotatorSkill(
            project_id=project.id,
            annotator_id=annotator_id,
            accuracy=float(accuracy[w]),
            confusion=fit.confusion[w].tolist(),
            labels=int(fitted.answers[w]),
        )
        for w, annotator_id in enumerate(fitted.annotator_ids)
    )


def _update_box_consensus(session: Session, *, project: Project, images: list[Image]) -> ConsensusSummary:
    """Refit the box classes' Dawid-Skene and recompute every detection image's current boxes (also after an
    exclusion, or a change of quorum or IoU threshold)."""
    excluded = excluded_annotators(session, project_id=project.id)
    answers: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    for image_id, annotator_id, boxes in session.execute(
        select(Annotation.image_id, Annotation.annotator_id, Annotation.boxes).where(
            Annotation.project_id == project.id, Annotation.is_current
        )
    ):
        if annotator_id not in excluded:
            answers[image_id][annotator_id] = boxes or []
    settings = project_settings(project)
    overlapped = sum(len(a) >= 2 for a in answers.values())
    fitted, reason = _fit_box_classes(project, settings, answers)
    _store_box_fit(session, project=project, fitted=fitted, images=len(answers), overlapped=overlapped)
    session.flush()
    counted = sorted({a for by_image in answers.values() for a in by_image})
    picker = _box_picker(session, project=project, annotator_ids=counted)
    annotators = annotator_members(session, project_id=project.id)
    changed = sent = differs = 0
    for image in images:
        before, asked = image.consensus_boxes, image.labels_needed
        mine = answers.get(image.id, {})
        _settle_boxes(project, settings, image, mine, annotators=annotators, pick_class=picker)
        changed += image.consensus_boxes != before
        sent += image.labels_needed > asked and image.queue_tier is not None
        if picker is not None and len(mine) >= 2 and image.gold_boxes is None:
            by_vote = [asdict(c.box) for c in image_box_consensus(project, mine, settings).boxes]
            differs += by_vote != image.consensus_boxes
    session.flush()
    return ConsensusSummary(
        method=Method.majority if fitted is None else Method.dawid_skene,
        reason=reason,
        images=sum(image.consensus_boxes is not None for image in images),
        overlapped_images=overlapped,
        annotators=len(counted),
        excluded_annotators=len(excluded),
        changed=changed,
        differs_from_majority=differs,
        sent_to_review=sent,
        iterations=0 if fitted is None else fitted.fit.iterations,
    )


def refresh_consensus(session: Session, *, project: Project, image: Image) -> None:
    """Recompute one image's label (or boxes) from its current annotations and the project's last fit (a few rows)."""
    annotators = annotator_members(session, project_id=project.id)
    answers: dict[int, Any] = {}
    if project.task_type is TaskType.detection or image.gold_label is None:
        column = Annotation.boxes if project.task_type is TaskType.detection else Annotation.label
        rows = session.execute(
            select(Annotation.annotator_id, column).where(Annotation.image_id == image.id, Annotation.is_current)
        ).all()
        answers = _counted(session, project_id=project.id, answers=dict(rows))
    apply_answers(session, project=project, image=image, answers=answers, annotators=annotators)


def apply_answers(
    session: Session,
    *,
    project: Project,
    image: Image,
    answers: Mapping[int, Any],
    annotators: int,
    fit: bool = True,
    settings: ProjectSettings | None = None,
) -> None:
    """Set one image's current label (or boxes) and queue place from its counted answers ({annotator: label, or
    boxes}, excluded annotators left out) and the project's last fit: what a submission calls with the answers it
    already read, and ``refresh_consensus`` after reading them. ``fit=False``: the caller knows there is none;
    ``settings``: the project's as the caller read them (by default, ``project``'s)."""
    settings = settings or project_settings(project)
    if project.task_type is TaskType.detection:
        boxes = {annotator: given or [] for annotator, given in answers.items()}
        picker = _box_picker(session, project=project, annotator_ids=list(boxes)) if fit else None
        _settle_boxes(project, settings, image, boxes, annotators=annotators, pick_class=picker)
        return
    if image.gold_label is not None:
        image.consensus_label, image.consensus_tie, image.consensus_posterior = image.gold_label, False, 1.0
        image.consensus_weak = False
        place_in_queue(image, annotators=annotators)
        return
    votes: Mapping[int, str] = answers
    fitted = session.get(ConsensusFit, project.id) if votes and fit else None
    if fitted is None:
        vote = majority_vote(list(votes.values()), project.labels)
        image.consensus_label, image.consensus_tie, image.consensus_posterior = vote.label, vote.tie, None
    else:
        skills = {
            s.annotator_id: np.asarray(s.confusion)
            for s in session.scalars(
                select(AnnotatorSkill).where(
                    AnnotatorSkill.project_id == project.id, AnnotatorSkill.annotator_id.in_(votes)
                )
            )
        }
        class_of = {label: k for k, label in enumerate(project.labels)}
        newcomer = one_coin(fitted.default_accuracy, len(project.labels))
        given = [(skills.get(annotator, newcomer), class_of[label]) for annotator, label in votes.items()]
        ordered = np.sort(posterior := posterior_from_skills(given, np.asarray(fitted.priors)))
        image.consensus_label = project.labels[int(posterior.argmax())]
        image.consensus_posterior = float(ordered[-1])
        image.consensus_tie = bool(ordered[-1] - ordered[-2] < TIE_TOLERANCE)
    _settle(image, settings, annotators=annotators)


@dataclass(frozen=True)
class ConsensusSummary:
    method: Method
    reason: str | None
    images: int  # images that have a consensus label
    overlapped_images: int
    annotators: int  # whose labels count
    excluded_annotators: int
    changed: int  # images whose consensus label changed
    differs_from_majority: int  # images where the consensus is not the majority vote
    sent_to_review: int
    iterations: int


def _store_fit(session: Session, *, project: Project, consensus: Consensus) -> None:
    """Keep the fit that ``refresh_consensus`` reads between refits; none under majority vote."""
    session.execute(delete(AnnotatorSkill).where(AnnotatorSkill.project_id == project.id))
    fit = session.get(ConsensusFit, project.id)
    if consensus.counts is None or consensus.priors is None:
        if fit is not None:
            session.delete(fit)
        return
    crowd = consensus.crowd
    counts = consensus.counts[~crowd.excluded]
    fit = fit or ConsensusFit(project_id=project.id)
    fit.priors = consensus.priors.tolist()
    fit.default_accuracy = float(np.trace(counts.sum(axis=0)) / max(counts.sum(), 1e-12))
    fit.images = int((consensus.label >= 0).sum())
    fit.overlapped_images = int(crowd.overlapped.sum())
    fit.iterations = consensus.iterations
    fit.fitted_at = utcnow()
    session.add(fit)
    confusion, accuracy = consensus.confusion, consensus.accuracy()
    assert confusion is not None and accuracy is not None
    labels = np.bincount(crowd.worker[crowd.usable], minlength=crowd.n_workers)
    session.add_all(
        AnnotatorSkill(
            project_id=project.id,
            annotator_id=int(crowd.annotator_ids[w]),
            accuracy=float(accuracy[w]),
            confusion=confusion[w].tolist(),
            labels=int(labels[w]),
        )
        for w in np.flatnonzero(~crowd.excluded & (labels > 0))
    )


def update_project_consensus(session: Session, project_id: int) -> ConsensusSummary:
    """Refit consensus on every current label and write each image's label, posterior and tie.

    Training reads ``images.consensus_label`` right after this. Admin-excluded annotators are left
    out; images whose consensus is weak get one more annotator (up to ``review_max_labels``).
    The project's labeled images are locked first, so no submission interleaves with the rewrite.
    """
    project = session.get_one(Project, project_id)
    mark_reports_outdated(session, project_id=project_id)  # they read the consensus rewritten here
    images = list(
        session.scalars(
            select(Image)
            .where(
                Image.project_id == project_id,
                or_(
                    Image.label_count > 0,
                    Image.gold_label.is_not(None),
                    Image.consensus_label.is_not(None),
                    Image.gold_boxes.is_not(None),
                    Image.consensus_boxes.is_not(None),
                ),
            )
            .order_by(Image.id)
            .with_for_update()
        )
    )
    if project.task_type is TaskType.detection:
        return _update_box_consensus(session, project=project, images=images)
    crowd = load_crowd(session, project=project)
    consensus = compute_consensus(crowd)
    _store_fit(session, project=project, consensus=consensus)
    settings = project_settings(project)
    annotators = annotator_members(session, project_id=project_id)
    changed = sent = 0
    for image in images:
        i = int(np.searchsorted(crowd.image_ids, image.id))
        found = i < crowd.n_items and crowd.image_ids[i] == image.id and consensus.label[i] >= 0
        label = crowd.labels[consensus.label[i]] if found else None
        posterior = float(consensus.posterior[i]) if found and not np.isnan(consensus.posterior[i]) else None
        changed += int(label != image.consensus_label)
        image.consensus_label, image.consensus_posterior = label, posterior
        image.consensus_tie = bool(found and consensus.tie[i])
        sent += _settle(image, settings, annotators=annotators)
    session.flush()
    return ConsensusSummary(
        method=consensus.method,
        reason=consensus.reason,
        images=int((consensus.label >= 0).sum()),
        overlapped_images=int(crowd.overlapped.sum()),
        annotators=len(np.unique(crowd.worker[crowd.usable])),
        excluded_annotators=int(crowd.excluded.sum()),
        changed=changed,
        differs_from_majority=int(((consensus.label != consensus.majority) & (consensus.label >= 0)).sum()),
        sent_to_review=sent,
        iterations=consensus.iterations,
    )


def weak_consensus(
    session: Session, *, project: Project, after: int | None, limit: int
) -> list[tuple[Image, dict[str, int]]]:
    """Images automatic review gave up on (all labels in, consensus still weak), each with its current votes.
    An admin resolves one by giving the answer as a gold label, which then scores everyone who labeled it."""
    require_classification(project, feature="the list of weak consensus labels (weak_box_consensus for boxes)")
    # consensus_weak (labeled, no gold answer, weak under the project's review_posterior) is written with the
    # consensus, and rewritten by update_settings when that changes; ix_images_weak holds these images alone.
    query = select(Image).where(
        Image.project_id == project.id,
        Image.consensus_weak,
        Image.queue_tier.is_(None),
    )
    if after is not None:
        query = query.where(Image.id > after)
    images = list(session.scalars(query.order_by(Image.id).limit(limit)))
    votes: dict[int, Counter[str]] = {image.id: Counter() for image in images}
    for image_id, label in session.execute(
        select(Annotation.image_id, Annotation.label).where(Annotation.image_id.in_(votes), Annotation.is_current)
    ):
        votes[image_id][str(label)] += 1  # a classification project: every annotation has a label
    return [(image, dict(votes[image.id])) for image in images]


@dataclass(frozen=True)
class WeakBoxes:
    image: Image
    weak: list[str]  # why the consensus is weak: Weak values, or no_counted_answer
    answers: dict[int, list[dict[str, Any]]]  # each counted annotator's current boxes


def weak_box_consensus(session: Session, *, project: Project, after: int | None, limit: int) -> list[WeakBoxes]:
    """Detection images automatic review gave up on: all answers in, consensus boxes still weak, each with the
    reasons (recomputed) and the answers behind it."""
    query = select(Image).where(
        Image.project_id == project.id,
        Image.consensus_weak,  # the box consensus's tie; served by ix_images_weak
        Image.queue_tier.is_(None),
    )
    if after is not None:
        query = query.where(Image.id > after)
    images = list(session.scalars(query.order_by(Image.id).limit(limit)))
    excluded = excluded_annotators(session, project_id=project.id)
    answers: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    for image_id, annotator_id, boxes in session.execute(
        select(Annotation.image_id, Annotation.annotator_id, Annotation.boxes).where(
            Annotation.image_id.in_([image.id for image in images]), Annotation.is_current
        )
    ):
        if annotator_id not in excluded:
            answers[image_id][annotator_id] = boxes or []
    settings = project_settings(project)
    picker = _box_picker(session, project=project, annotator_ids=sorted({a for b in answers.values() for a in b}))
    weak = {
        image.id: [str(reason) for reason in image_box_consensus(project, answers[image.id], settings, picker).weak]
        if answers[image.id]
        else ["no_counted_answer"]
        for image in images
    }
    return [WeakBoxes(image, weak[image.id], answers[image.id]) for image in images]
