"""Box agreement, consensus boxes and box scorecards: pure functions over plain boxes, no database.

Boxes are in upright-image pixels, (x, y) the top-left corner. Two sets of boxes are paired
one-to-one by the Hungarian algorithm (scipy's ``linear_sum_assignment``) on IoU: greedy pairing
can give a box to a slightly better partner and leave its neighbour unpaired, which then counts as
a miss and an extra box at once. Every figure says how many boxes and images it rests on.

One mistake gets its own treatment: a single box around two or more touching objects (a *merge*).
It is neither a wrong outline of one object nor an extra box, so consensus counts it as a vote for
the objects inside without letting it shape them, and scorecards count it once, as a merge.
"""

from __future__ import annotations

import enum
import itertools
import math
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from annotation.agreement import ONE_CLASS, Figure, reading

IOU_THRESHOLD = 0.5  # a pair of boxes at or above this IoU is the same object (PASCAL VOC, COCO's AP50)
TIGHT_IOU = 0.75  # a matched box below this IoU is loose (COCO's AP75)
WEAK_IOU = 0.6  # boxes behind a consensus box agreeing less than this on average: its outline is doubtful
COVERED = 0.6  # a box covers an object when it holds this share of the object's area
MERGE_MARGIN = 0.1  # ...and outlines two or more objects together this much better than any one of them
DISTINCT_IOU = 0.25  # two objects inside one merge box overlap less than this
MIN_IMAGES = 20  # images scored before any flag
MAX_MISSED, MAX_EXTRA = 0.15, 0.15  # above these shares of objects, of boxes: missed objects, extra boxes
MAX_LOOSE, MAX_CONFUSED = 0.25, 0.10  # above these shares of matched boxes: loose boxes, class confusion
MIN_MERGES, MAX_MERGED = 3, 0.05  # at least this many merge boxes, covering more than this share of objects


@dataclass(frozen=True)
class Box:
    label: str
    x: float
    y: float
    w: float
    h: float

    def __post_init__(self) -> None:
        if not (self.w > 0 and self.h > 0):
            raise ValueError(f"a box needs a positive width and height, got w={self.w}, h={self.h}")

    @property
    def corners(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)


def _corners(boxes: Sequence[Box]) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2."""
    return np.array([box.corners for box in boxes], dtype=np.float64).reshape(-1, 4)


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection areas of corner arrays (N, 4) and (M, 4)."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def _areas(corners: np.ndarray) -> np.ndarray:
    return (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])


def _ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of corner arrays (N, 4) and (M, 4)."""
    inter = _intersections(a, b)
    return inter / (_areas(a)[:, None] + _areas(b)[None, :] - inter)


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """(N, M) intersection over union of every box in ``a`` with every box in ``b``, labels ignored."""
    return _ious(_corners(a), _corners(b))


def iou(a: Box, b: Box) -> float:
    return float(iou_matrix([a], [b])[0, 0])


@dataclass(frozen=True)
class Matching:
    pairs: list[tuple[int, int, float]]  # (index in a, index in b, IoU), by index in a
    unmatched_a: list[int]
    unmatched_b: list[int]


def assign(scores: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one pairs of rows and columns of an (N, M) score matrix, each scoring at least ``threshold``:
    as many pairs as possible, then the largest total score among those.

    Every eligible pair is worth more than any sum of scores (scores are at most 1), so the solver
    never trades a pair for a better fit elsewhere; ties go to whichever the solver meets first,
    the same for the same input order.
    """
    # Imported when first used: scipy.optimize took a sixth of the API process's start-up.
    from scipy.optimize import linear_sum_assignment

    eligible = scores >= threshold
    if not eligible.any():
        return []
    bonus = min(scores.shape) + 1.0
    rows, cols = linear_sum_assignment(np.where(eligible, scores + bonus, 0.0), maximize=True)
    return [(int(r), int(c), float(scores[r, c])) for r, c in zip(rows, cols, strict=True) if eligible[r, c]]


def match(a: Sequence[Box], b: Sequence[Box], *, iou_threshold: float = IOU_THRESHOLD) -> Matching:
    """Pair the boxes of two annotators (labels ignored): the most pairs at or above ``iou_threshold``,
    then the largest total IoU."""
    pairs = assign(iou_matrix(a, b), iou_threshold) if a and b else []
    paired_a, paired_b = {i for i, _, _ in pairs}, {j for _, j, _ in pairs}
    return Matching(
        pairs=pairs,
        unmatched_a=[i for i in range(len(a)) if i not in paired_a],
        unmatched_b=[j for j in range(len(b)) if j not in paired_b],
    )


# Agreement between two annotators ------------------------------------------------------------------


@dataclass(frozen=True)
class BoxFigures:
    first_boxes: int
    second_boxes: int
    matched: int
    precision: float | None  # matched / second's boxes (the first annotator read as the reference)
    recall: float | None  # matched / first's boxes
    f1: float | None  # symmetric: 2 matched / all boxes
    mean_iou: float | None  # of matched boxes
    label_agreement: float | None  # share of matched boxes with the same label
    cohen_kappa: Figure  # on the labels of matched boxes


@dataclass(frozen=True)
class ClassBoxFigures:
    label: str
    figures: BoxFigures  # a box counts for this class only when both annotators gave it this label


@dataclass(frozen=True)
class BoxPairAgreement:
    images: int  # images both annotated, with or without boxes
    overall: BoxFigures
    per_class: list[ClassBoxFigures]


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _kappa(first: list[str], second: list[str]) -> Figure:
    if not first:
        return Figure(None, 0, None, "no box of one annotator matches a box of the other")
    if len(set(first) | set(second)) == 1:
        return Figure(None, len(first), None, ONE_CLASS)
    from sklearn.metrics import cohen_kappa_score  # imported here: seconds that the API's start need not pay

    value = float(cohen_kappa_score(first, second))
    return Figure(value, len(first), reading(value))


def _figures(n_first: int, n_second: int, ious: list[float], first: list[str], second: list[str]) -> BoxFigures:
    matched = len(ious)
    return BoxFigures(
        first_boxes=n_first,
        second_boxes=n_second,
        matched=matched,
        precision=_ratio(matched, n_second),
        recall=_ratio(matched, n_first),
        f1=_ratio(2 * matched, n_first + n_second),
        mean_iou=float(np.mean(ious)) if ious else None,
        label_agreement=_ratio(sum(x == y for x, y in zip(first, second, strict=True)), matched),
        cohen_kappa=_kappa(first, second),
    )


def pair_agreement(
    first: Sequence[Sequence[Box]], second: Sequence[Sequence[Box]], *, iou_threshold: float = IOU_THRESHOLD
) -> BoxPairAgreement:
    """Box agreement of two annotators over the images both annotated (``first[i]`` and ``second[i]``
    are their boxes on image i): overall, the boxes paired whatever their labels, and per class, the
    boxes each gave that class, paired only where both did. Per class, label agreement is the share
    of matched boxes that either labeled so that both did, and kappa is that class against the rest."""
    if len(first) != len(second):
        raise ValueError(f"both annotators' boxes are needed for the same images: got {len(first)} and {len(second)}")
    ious: list[float] = []
    labels_first: list[str] = []
    labels_second: list[str] = []
    count_first: Counter[str] = Counter()
    count_second: Counter[str] = Counter()
    for a, b in zip(first, second, strict=True):
        count_first.update(box.label for box in a)
        count_second.update(box.label for box in b)
        for i, j, value in match(a, b, iou_threshold=iou_threshold).pairs:
            ious.append(value)
            labels_first.append(a[i].label)
            labels_second.append(b[j].label)
    overall = _figures(count_first.total(), count_second.total(), ious, labels_first, labels_second)
    per_class = []
    for label in sorted(count_first.keys() | count_second.keys()):
        both = [k for k in range(len(ious)) if labels_first[k] == labels_second[k] == label]
        binary_first = [x == label for x in labels_first]
        binary_second = [y == label for y in labels_second]
        kappa = _kappa([str(x) for x in binary_first], [str(y) for y in binary_second])
        either = sum(x or y for x, y in zip(binary_first, binary_second, strict=True))
        figures = BoxFigures(
            first_boxes=count_first[label],
            second_boxes=count_second[label],
            matched=len(both),
            precision=_ratio(len(both), count_second[label]),
            recall=_ratio(len(both), count_first[label]),
            f1=_ratio(2 * len(both), count_first[label] + count_second[label]),
            mean_iou=float(np.mean([ious[k] for k in both])) if both else None,
            label_agreement=_ratio(len(both), either),
            cohen_kappa=kappa,
        )
        per_class.append(ClassBoxFigures(label, figures))
    return BoxPairAgreement(images=len(first), overall=overall, per_class=per_class)


# Consensus boxes -----------------------------------------------------------------------------------


class Weak(enum.StrEnum):
    """Why an image's consensus boxes are doubtful enough to ask one more annotator."""

    at_quorum = "at_quorum"  # a box drawn by exactly as many annotators as the quorum asks
    class_tie = "class_tie"  # a box whose class vote is tied
    low_iou = "low_iou"  # a box whose annotators' outlines agree little (mean IoU below WEAK_IOU)
    half_drawn = "half_drawn"  # a box drawn by exactly half the annotators (with two, one drew it and one did not)
    merge_vote = "merge_vote"  # a box that reaches the quorum only with votes of boxes drawn around it and a neighbour


@dataclass(frozen=True)
class ConsensusBox:
    box: Box
    annotators: list[Hashable]  # who outlined it, one box each
    classes: list[str]  # the class each of them gave it, in the same order
    merged_by: list[Hashable]  # who drew it only inside a box around it and its neighbours
    mean_iou: float  # mean IoU between the outlines behind it (1.0 for one)
    tie: bool  # the class vote was tied (settled by ``label_order``)

    @property
    def support(self) -> int:
        return len(self.annotators) + len(self.merged_by)


@dataclass(frozen=True)
class BoxConsensus:
    boxes: list[ConsensusBox]
    weak: list[Weak]  # empty when the consensus is firm
    dropped: int  # clusters drawn by fewer annotators than the quorum


Cluster = list[tuple[Hashable, Box]]
# Picks a consensus box's class from its outlines' (annotator, class) pairs: (class, whether it was a tie).
ClassPicker = Callable[[Sequence[tuple[Hashable, str]]], tuple[str, bool]]


def _fuse(members: list[Box]) -> np.ndarray:
    """Coordinate-wise median of the corners: one loose outline among three does not move it.

    ``statistics.median`` rather than numpy's: the same value, and many times faster on a handful of numbers,
    which is what a cluster holds (this runs inside every submission of an overlapped image).
    """
    corners = [box.corners for box in members]
    return np.array([statistics.median(corner[i] for corner in corners) for i in range(4)])


def _outline(corners: np.ndarray) -> Box:
    x1, y1, x2, y2 = (float(v) for v in corners)
    return Box("", x1, y1, x2 - x1, y2 - y1)


def _cluster(order: list[Hashable], boxes: Mapping[Hashable, Sequence[Box]], iou_threshold: float) -> list[Cluster]:
    """Annotators in turn have their boxes matched to the clusters' current median outlines."""
    clusters: list[Cluster] = []
    for annotator in order:
        mine = list(boxes[annotator])
        pairs = []
        if clusters and mine:
            outlines = [_outline(_fuse([box for _, box in cluster])) for cluster in clusters]
            pairs = assign(iou_matrix(mine, outlines), iou_threshold)
        joined = {i for i, _, _ in pairs}
        for i, c, _ in pairs:
            clusters[c].append((annotator, mine[i]))
        clusters.extend([(annotator, box)] for i, box in enumerate(mine) if i not in joined)
    return clusters


def _merges(
    clusters: list[Cluster], boxes: Mapping[Hashable, Sequence[Box]], iou_threshold: float
) -> dict[Hashable, set[int]]:
    """{annotator: indices of their boxes that outline two or more of the others' objects as one}.

    A box another annotator drew too (IoU at least ``TIGHT_IOU``) is no merge: two people saw one
    object there, and the clusters settle who is right by quorum.
    """
    found: dict[Hashable, set[int]] = {}
    for annotator, mine in boxes.items():
        others = [[box for k, box in cluster if k != annotator] for cluster in clusters]
        outlines = [_outline(_fuse(members)) for members in others if members]
        merged = set(merge_boxes(mine, outlines, iou_threshold=iou_threshold))
        theirs = [box for k, drawn in boxes.items() if k != annotator for box in drawn]
        if merged and theirs:
            shared = iou_matrix([mine[i] for i in sorted(merged)], theirs).max(axis=1) >= TIGHT_IOU
            merged -= {i for i, drawn_too in zip(sorted(merged), shared, strict=True) if drawn_too}
        if merged:
            found[annotator] = merged
    return found


def _merged_objects(box: Box, corners: np.ndarray, clusters: list[Cluster]) -> list[int]:
    """The clusters a merge box stands for: those it covers, the most drawn first, leaving out any that
    overlaps one already taken (objects outlined together are side by side; a stray box drawn over
    one of them is not another object)."""
    covered = _intersections(_corners([box]), corners)[0] / _areas(corners) >= COVERED
    chosen: list[int] = []
    for c in sorted(np.flatnonzero(covered), key=lambda c: -len(clusters[c])):
        if not (_ious(corners[[c]], corners[chosen]) >= DISTINCT_IOU).any():
            chosen.append(int(c))
    return chosen


def _vote(
    votes: Sequence[tuple[Hashable, str]], weights: Mapping[Hashable, float], rank: Mapping[str, int]
) -> tuple[str, bool]:
    totals: dict[str, float] = {}
    for annotator, label in votes:
        totals[label] = totals.get(label, 0.0) + weights.get(annotator, 1.0)
    best = max(totals.values())
    tied = [label for label, total in totals.items() if math.isclose(total, best, rel_tol=1e-9, abs_tol=1e-12)]
    return min(tied, key=lambda label: (rank.get(label, len(rank)), label)), len(tied) > 1


def _mean_pairwise_iou(members: list[Box]) -> float:
    """In plain Python: a cluster holds a box per annotator, a handful, where numpy's overhead dominates."""
    if len(members) < 2:
        return 1.0
    ious = []
    for a, b in itertools.combinations(members, 2):
        width = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
        height = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
        inter = max(width, 0.0) * max(height, 0.0)
        ious.append(inter / (a.w * a.h + b.w * b.h - inter))
    return statistics.fmean(ious)


def consensus_boxes(
    boxes_by_annotator: Mapping[Hashable, Sequence[Box]],
    *,
    quorum: int | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    weights: Mapping[Hashable, float] | None = None,
    label_order: Sequence[str] = (),
    weak_iou: float = WEAK_IOU,
    pick_class: ClassPicker | None = None,
) -> BoxConsensus:
    """The consensus boxes of one image from every annotator's boxes (an empty list for one who drew none).

    Boxes are clustered across annotators, at most one box per annotator per cluster: annotators in
    turn (the heaviest ``weights`` first, then in the mapping's order) have their boxes matched to
    the clusters' current median outlines with the Hungarian matcher; a box left over starts a
    cluster. A box outlining two or more of the others' objects as one (``merge_boxes``) is taken
    out and counts as a vote for each object it covers, not as an outline. A cluster drawn by at
    least ``quorum`` annotators (default: a majority of them) is a consensus box: class by weighted
    vote (a tie goes to the label first in ``label_order``, then alphabetically) or by ``pick_class``
    (Dawid-Skene's posterior, once fitted), outline by the median of its corners.
    """
    weights = weights or {}
    order = sorted(boxes_by_annotator, key=lambda k: -weights.get(k, 1.0))  # stable: mapping order on ties
    quorum = len(order) // 2 + 1 if quorum is None else quorum
    if order and not 1 <= quorum <= len(order):
        raise ValueError(f"quorum must be between 1 and the {len(order)} annotators of the image, got {quorum}")
    clusters = _cluster(order, boxes_by_annotator, iou_threshold)
    merged = _merges(clusters, boxes_by_annotator, iou_threshold)
    votes: list[list[Hashable]] = [[] for _ in clusters]
    if merged:
        outlined = {
            k: [b for i, b in enumerate(boxes) if i not in merged.get(k, ())] for k, boxes in boxes_by_annotator.items()
        }
        clusters = _cluster(order, outlined, iou_threshold)
        votes = [[] for _ in clusters]
        corners = np.array([_fuse([box for _, box in cluster]) for cluster in clusters])
        for annotator, indices in merged.items():
            for index in indices:
                for c in _merged_objects(boxes_by_annotator[annotator][index], corners, clusters):
                    if annotator not in {k for k, _ in clusters[c]}:
                        votes[c].append(annotator)

    rank = {label: i for i, label in enumerate(label_order)}
    result, weak, dropped = [], set(), 0
    for cluster, merged_by in zip(clusters, votes, strict=True):
        support = len(cluster) + len(merged_by)
        if 2 * support == len(order):
            weak.add(Weak.half_drawn)
        if support < quorum:
            dropped += 1
            continue
        members = [box for _, box in cluster]
        given = [(annotator, box.label) for annotator, box in cluster]
        label, tie = pick_class(given) if pick_class else _vote(given, weights, rank)
        outline = _outline(_fuse(members))
        agreement = _mean_pairwise_iou(members)
        box = replace(outline, label=label)
        result.append(ConsensusBox(box, [k for k, _ in given], [c for _, c in given], merged_by, agreement, tie))
        if support == quorum < len(order):
            weak.add(Weak.at_quorum)
        if len(cluster) < quorum:
            weak.add(Weak.merge_vote)
        if tie:
            weak.add(Weak.class_tie)
        if agreement < weak_iou:
            weak.add(Weak.low_iou)
    return BoxConsensus(boxes=result, weak=sorted(weak), dropped=dropped)


# Merges --------------------------------------------------------------------------------------------


def merge_boxes(
    boxes: Sequence[Box], reference: Sequence[Box], *, iou_threshold: float = IOU_THRESHOLD
) -> dict[int, list[int]]:
    """{index of a box: indices of the reference boxes it merges}: boxes covering two or more objects
    and outlining them together (IoU with their enclosing box at least ``iou_threshold``) clearly
    better than any one of them, so a box around a person holding a bag is not a merge."""
    if not boxes or len(reference) < 2:
        return {}
    ours, theirs = _corners(boxes), _corners(reference)
    covered = _intersections(ours, theirs) / _areas(theirs)[None, :] >= COVERED
    single = iou_matrix(boxes, reference)
    merges = {}
    for i in np.flatnonzero(covered.sum(axis=1) >= 2):
        inside = np.flatnonzero(covered[i])
        enclosing = np.concatenate([theirs[inside, :2].min(axis=0), theirs[inside, 2:].max(axis=0)])[None, :]
        together = float(_ious(ours[i : i + 1], enclosing)[0, 0])
        if together >= iou_threshold and together >= single[i].max() + MERGE_MARGIN:
            merges[int(i)] = [int(j) for j in inside]
    return merges


# Scorecards ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxFlag:
    flag: str  # missed_objects, extra_boxes, loose_boxes, class_confusion, merges
    evidence: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BoxScorecard:
    images: int
    objects: int  # reference boxes (consensus or gold)
    boxes: int  # the annotator's boxes
    matched: int
    missed: int  # objects neither matched nor inside one of their merge boxes
    extra: int  # their boxes matching no object, merge boxes aside
    loose: int  # matched below ``tight_iou``
    confused: int  # matched with another label
    confusions: dict[tuple[str, str], int]  # (reference label, their label) -> matched boxes
    merges: int  # their boxes outlining two or more objects as one
    merged_objects: int  # objects inside those boxes and not matched otherwise
    mean_iou: float | None
    flags: list[BoxFlag]

    @property
    def recall(self) -> float | None:
        return _ratio(self.matched, self.objects)

    @property
    def precision(self) -> float | None:
        return _ratio(self.matched, self.boxes)


def _flags(card: BoxScorecard) -> list[BoxFlag]:
    if card.images < MIN_IMAGES:
        return []
    flags = []
    where = f"on {card.images} images"
    if card.objects and card.missed / card.objects > MAX_MISSED:
        flags.append(
            BoxFlag(
                "missed_objects",
                f"missed {card.missed} of {card.objects} objects {where}",
                {"missed": card.missed, "objects": card.objects},
            )
        )
    outlines = card.boxes - card.merges
    if outlines and card.extra / outlines > MAX_EXTRA:
        flags.append(
            BoxFlag(
                "extra_boxes",
                f"{card.extra} of {outlines} boxes match no object {where}",
                {"extra": card.extra, "boxes": outlines},
            )
        )
    if card.matched and card.loose / card.matched > MAX_LOOSE:
        flags.append(
            BoxFlag(
                "loose_boxes",
                f"{card.loose} of {card.matched} matched boxes are loose (IoU below the tight threshold) {where}",
                {"loose": card.loose, "matched": card.matched, "mean_iou": card.mean_iou},
            )
        )
    if card.matched and card.confused / card.matched > MAX_CONFUSED:
        (expected, given), times = max(card.confusions.items(), key=lambda item: item[1])
        flags.append(
            BoxFlag(
                "class_confusion",
                f"{card.confused} of {card.matched} matched boxes have another class {where}; "
                f"most often {expected!r} labeled {given!r} ({times} times)",
                {"confused": card.confused, "matched": card.matched, "most_often": [expected, given, times]},
            )
        )
    if card.merges >= MIN_MERGES and card.objects and card.merged_objects / card.objects > MAX_MERGED:
        flags.append(
            BoxFlag(
                "merges",
                f"{card.merges} boxes each outline two or more objects as one "
                f"({card.merged_objects} of {card.objects} objects) {where}",
                {"merges": card.merges, "merged_objects": card.merged_objects, "objects": card.objects},
            )
        )
    return flags


def box_scorecard(
    boxes: Sequence[Sequence[Box]],
    reference: Sequence[Sequence[Box]],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    tight_iou: float = TIGHT_IOU,
) -> BoxScorecard:
    """One annotator's boxes (``boxes[i]`` on image i) against reference boxes on the same images, the
    consensus or gold answers alike: counts of each kind of mistake and the flags they raise, once
    ``MIN_IMAGES`` images are scored. Merge boxes are taken out before matching, so a merge counts
    once, as a merge, not as an extra box and missed objects."""
    if len(boxes) != len(reference):
        raise ValueError(
            f"boxes and reference boxes are needed for the same images: got {len(boxes)} and {len(reference)}"
        )
    objects = drawn = matched = missed = extra = loose = merges = merged_objects = 0
    confusions: Counter[tuple[str, str]] = Counter()
    ious: list[float] = []
    for mine, truth in zip(boxes, reference, strict=True):
        merged = merge_boxes(mine, truth, iou_threshold=iou_threshold)
        rest = [i for i in range(len(mine)) if i not in merged]
        matching = match([mine[i] for i in rest], truth, iou_threshold=iou_threshold)
        inside = {j for covered in merged.values() for j in covered}
        objects += len(truth)
        drawn += len(mine)
        matched += len(matching.pairs)
        missed += sum(j not in inside for j in matching.unmatched_b)
        merged_objects += sum(j in inside for j in matching.unmatched_b)
        extra += len(matching.unmatched_a)
        merges += len(merged)
        for i, j, value in matching.pairs:
            ious.append(value)
            loose += value < tight_iou
            if mine[rest[i]].label != truth[j].label:
                confusions[(truth[j].label, mine[rest[i]].label)] += 1
    card = BoxScorecard(
        images=len(boxes),
        objects=objects,
        boxes=drawn,
        matched=matched,
        missed=missed,
        extra=extra,
        loose=loose,
        confused=confusions.total(),
        confusions=dict(confusions),
        merges=merges,
        merged_objects=merged_objects,
        mean_iou=float(np.mean(ious)) if ious else None,
        flags=[],
    )
    return replace(card, flags=_flags(card))
