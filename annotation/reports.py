"""The agreement reports (labels; boxes), and the human-level reference the model card sets beside the model's
accuracy."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from annotation.agreement import NO_OVERLAP, Agreement, agreement, without_figures
from annotation.boxes import Box, BoxPairAgreement, assign, iou_matrix, pair_agreement
from annotation.crowd import excluded_annotators, load_crowd
from storage.models import Annotation, Image, Project, Split, TaskType, User
from storage.projects import project_settings


@dataclass(frozen=True)
class HumanAccuracy:
    annotator_id: int
    name: str
    labels: int
    correct: int
    accuracy: float


@dataclass(frozen=True)
class HumanReference:
    items: int  # test images with a gold answer or labels from two annotators
    pooled_accuracy: float | None  # all those labels together
    median_accuracy: float | None  # the typical annotator
    annotators: list[HumanAccuracy]
    reason: str | None


@dataclass(frozen=True)
class _Label:
    image_id: int
    annotator_id: int
    label: str | None
    consensus_label: str | None
    gold_label: str | None


def _human_reference(session: Session, *, project_id: int) -> HumanReference:
    """Each annotator's accuracy against the consensus label on test images, the reference the model is
    scored against. Only images with a gold answer or two usable labels count: on an image one person
    labeled alone, their label *is* the consensus."""
    excluded = excluded_annotators(session, project_id=project_id)
    # Only test images with a gold answer or two annotators (label_count) can count: those first, then their
    # labels, so a model card reads a few hundred labels rather than all of a large project's (bench/console.py).
    candidates = {
        image.id: image
        for image in session.execute(
            select(Image.id, Image.consensus_label, Image.gold_label).where(
                Image.project_id == project_id,
                Image.split == Split.test,
                Image.consensus_label.is_not(None),
                or_(Image.label_count >= 2, Image.gold_label.is_not(None)),
            )
        )
    }
    ids = list(candidates)
    rows = [
        _Label(image_id, annotator_id, label, candidates[image_id].consensus_label, candidates[image_id].gold_label)
        for start in range(0, len(ids), 500)
        for image_id, annotator_id, label in session.execute(
            select(Annotation.image_id, Annotation.annotator_id, Annotation.label).where(
                Annotation.image_id.in_(ids[start : start + 500]), Annotation.is_current
            )
        )
        if annotator_id not in excluded
    ]
    per_image = Counter(r.image_id for r in rows)
    checked = [r for r in rows if r.gold_label is not None or per_image[r.image_id] >= 2]
    if not checked:
        reason = "no test image has a gold answer or labels from two annotators yet"
        return HumanReference(0, None, None, [], reason)
    totals: dict[int, list[int]] = {}
    for r in checked:
        counts = totals.setdefault(r.annotator_id, [0, 0])
        counts[0] += 1
        counts[1] += r.label == r.consensus_label
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(totals))).all())
    annotators = [
        HumanAccuracy(a, names.get(a, f"user {a}"), n, correct, correct / n)
        for a, (n, correct) in sorted(totals.items())
    ]
    return HumanReference(
        items=len({r.image_id for r in checked}),
        pooled_accuracy=sum(h.correct for h in annotators) / sum(h.labels for h in annotators),
        median_accuracy=float(np.median([h.accuracy for h in annotators])),
        annotators=annotators,
        reason=None,
    )


def human_reference(session: Session, project_id: int) -> dict[str, Any]:
    """The human-level reference as plain data, for the model card: annotators' accuracy against consensus on test
    images, or in a detection project their box F1 against the consensus boxes."""
    if session.get_one(Project, project_id).task_type is TaskType.detection:
        return asdict(_box_human_reference(session, project_id=project_id))
    return asdict(_human_reference(session, project_id=project_id))


@dataclass(frozen=True)
class HumanBoxF1:
    annotator_id: int
    name: str
    images: int
    boxes: int  # theirs
    reference_boxes: int  # the consensus (or gold) boxes of the same images
    matched: int  # theirs matching one of those, same class, IoU >= 0.5, one to one
    f1: float


@dataclass(frozen=True)
class BoxHumanReference:
    items: int  # test images with gold boxes or answers from two annotators
    pooled_f1: float | None
    median_f1: float | None
    annotators: list[HumanBoxF1]
    reason: str | None


def _matched_same_class(mine: list[Box], reference: list[Box]) -> int:
    if not mine or not reference:
        return 0
    ious = iou_matrix(mine, reference)
    ious[np.array([[a.label != b.label for b in reference] for a in mine])] = 0.0
    return len(assign(ious, 0.5))


def _box_human_reference(session: Session, *, project_id: int) -> BoxHumanReference:
    """Each annotator's box F1 at IoU 0.5 (class and all) against the consensus boxes (gold boxes where set) on test
    images answered by two annotators or gold: the detector's F1 on the card reads against this."""
    excluded = excluded_annotators(session, project_id=project_id)
    rows = [
        row
        for row in session.execute(
            select(
                Annotation.image_id, Annotation.annotator_id, Annotation.boxes, Image.consensus_boxes, Image.gold_boxes
            )
            .join(Image, Image.id == Annotation.image_id)
            .where(
                Annotation.project_id == project_id,
                Annotation.is_current,
                Image.split == Split.test,
                Image.consensus_boxes.is_not(None),
            )
        )
        if row.annotator_id not in excluded and row.boxes is not None
    ]
    per_image = Counter(r.image_id for r in rows)
    checked = [r for r in rows if r.gold_boxes is not None or per_image[r.image_id] >= 2]
    if not checked:
        return BoxHumanReference(0, None, None, [], "no test image has gold boxes or answers from two annotators yet")
    totals: dict[int, list[int]] = {}
    for r in checked:
        mine = [Box(**b) for b in r.boxes]
        reference = [Box(**b) for b in (r.gold_boxes if r.gold_boxes is not None else r.consensus_boxes)]
        counts = totals.setdefault(r.annotator_id, [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += len(mine)
        counts[2] += len(reference)
        counts[3] += _matched_same_class(mine, reference)
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(totals))).all())
    annotators = [
        HumanBoxF1(a, names.get(a, f"user {a}"), n, own, ref, hit, 2 * hit / (own + ref) if own + ref else 1.0)
        for a, (n, own, ref, hit) in sorted(totals.items())
    ]
    own_all, ref_all = sum(h.boxes for h in annotators), sum(h.reference_boxes for h in annotators)
    return BoxHumanReference(
        items=len({r.image_id for r in checked}),
        pooled_f1=2 * sum(h.matched for h in annotators) / (own_all + ref_all) if own_all + ref_all else 1.0,
        median_f1=float(np.median([h.f1 for h in annotators])),
        annotators=annotators,
        reason=None,
    )


@dataclass(frozen=True)
class AgreementReport:
    labels: list[str]
    annotators: list[int]  # annotators whose labels count, in the order pair indices refer to
    names: dict[int, str]
    excluded_annotators: list[int]
    reason: str | None  # why the figures are empty
    agreement: Agreement
    human_reference: HumanReference


@dataclass(frozen=True)
class BoxAgreementReport:
    annotators: list[int]  # whose boxes count (excluded ones left out)
    names: dict[int, str]
    excluded_annotators: list[int]
    iou_threshold: float
    images: int  # overlapped images: boxes from at least two counted annotators
    reason: str | None  # why there are no figures
    overall: BoxPairAgreement | None  # every pair's shared images pooled
    pairs: list[tuple[int, int, BoxPairAgreement]]  # (annotator, annotator, their agreement)


def box_agreement_report(session: Session, *, project: Project) -> BoxAgreementReport:
    """Box agreement on overlapped images of a detection project: for each pair of annotators, their boxes on the
    images both answered matched one to one by IoU (``annotation.boxes.pair_agreement``), and all pairs pooled."""
    threshold = project_settings(project).iou_threshold
    excluded = excluded_annotators(session, project_id=project.id)
    by_image: dict[int, dict[int, list[Box]]] = defaultdict(dict)
    rows = session.execute(
        select(Annotation.image_id, Annotation.annotator_id, Annotation.boxes).where(
            Annotation.project_id == project.id, Annotation.is_current, Annotation.boxes.is_not(None)
        )
    )
    for image_id, annotator_id, boxes in rows:
        if annotator_id not in excluded:
            by_image[image_id][annotator_id] = [Box(**box) for box in boxes or []]
    annotators = sorted({a for answers in by_image.values() for a in answers})
    overlapped = {image_id: answers for image_id, answers in by_image.items() if len(answers) >= 2}
    pairs, pooled_first, pooled_second = [], [], []
    for a, b in itertools.combinations(annotators, 2):
        shared = [answers for answers in overlapped.values() if a in answers and b in answers]
        if shared:
            first, second = [answers[a] for answers in shared], [answers[b] for answers in shared]
            pairs.append((a, b, pair_agreement(first, second, iou_threshold=threshold)))
            pooled_first += first
            pooled_second += second
    reason = None
    if len(annotators) < 2:
        reason = f"needs two annotators; {len(annotators)} has answered (excluded annotators left out)"
    elif not pairs:
        reason = NO_OVERLAP
    overall = pair_agreement(pooled_first, pooled_second, iou_threshold=threshold) if pairs else None
    return BoxAgreementReport(
        annotators=annotators,
        names=dict(session.execute(select(User.id, User.name).where(User.id.in_(annotators))).all()),
        excluded_annotators=sorted(excluded),
        iou_threshold=threshold,
        images=len(overlapped),
        reason=reason,
        overall=overall,
        pairs=pairs,
    )


def agreement_report(session: Session, *, project: Project) -> AgreementReport:
    """Agreement on overlapped images among annotators whose labels count (admin-excluded ones left out)."""
    crowd = load_crowd(session, project=project)
    counted = [int(a) for a in crowd.annotator_ids[~crowd.excluded]]
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(counted))).all())
    reason: str | None = None
    if len(counted) < 2:
        reason = f"needs two annotators; {len(counted)} has labeled (excluded annotators left out)"
        figures = without_figures(reason)
    else:
        figures = agreement(crowd.ratings(), crowd.n_classes)
        if figures.items == 0:
            reason = NO_OVERLAP
    return AgreementReport(
        labels=crowd.labels,
        annotators=counted,
        names=names,
        excluded_annotators=[int(a) for a in crowd.annotator_ids[crowd.excluded]],
        reason=reason,
        agreement=figures,
        human_reference=_human_reference(session, project_id=project.id),
    )
