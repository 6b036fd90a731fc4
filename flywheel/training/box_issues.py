"""Box label issues: images whose boxes a detector's out-of-sample predictions find likely wrong, ranked by
cleanlab's ObjectLab (``cleanlab.object_detection``), each with the kind of error that scores worst.

The three kinds are ObjectLab's: ``overlooked`` (the detector confidently sees an object that no box marks),
``swap`` (a box whose class the detector confidently puts in another) and ``badloc`` (a box the detector finds
elsewhere). The predictions must be out of sample (``flywheel.training.box_label_quality``).

"Confidently" is ObjectLab's ``high_probability_threshold``, 0.95 by default; here ``SURE`` (0.8) on calibrated
scores. The calibration can only measure agreement with the given boxes, and those include the errors we look for:
a detector that finds a dropped box is scored a miss there. So its sure boxes read 0.9 to 0.95, and at 0.95 ObjectLab
saw almost no overlooked or swapped box and named nearly every issue badloc (``bench/detection_label_quality.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from annotation.label_issues import ISSUE_TYPES
from flywheel.serving.detection import MIN_SCORE, Detections, box_ious

MATCH_IOU = 0.5
SURE = 0.8  # ObjectLab's high_probability_threshold on calibrated scores: 4 in 5 boxes so scored match a given box


@dataclass(frozen=True)
class BoxIssue:
    index: int  # row in the lists given
    score: float  # ObjectLab's label quality of the image in [0, 1]; low is bad
    issue_type: str  # the kind whose pooled score is lowest (ISSUE_TYPES)
    box: tuple[float, float, float, float]  # x1, y1, x2, y2: the detector's box if overlooked, else the given box
    given: int | None  # the given box's class; None for an overlooked object
    suggested: int  # the class the detector gives it
    type_scores: dict[str, float]  # each kind's pooled score for the image (1.0: no sign of it)
    flagged: bool  # by cleanlab's find_label_issues (else listed for its score alone)


def cleanlab_predictions(found: Detections, num_classes: int) -> list[np.ndarray]:
    """One image's detections in cleanlab's layout: per class an (M, 5) array of x1, y1, x2, y2, score. A
    centre-point detector scores every class at each box's centre; each of those scores is a candidate box of that
    class (a swap shows as a confident box of another class on the given box)."""
    per_class: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for j, box in enumerate(found.boxes):
        if found.class_scores is None:
            per_class[int(found.classes[j])].append(np.append(box, found.scores[j]))
            continue
        for k in np.flatnonzero(found.class_scores[j] >= MIN_SCORE):
            per_class[int(k)].append(np.append(box, found.class_scores[j, k]))
    return [np.array(rows, dtype=np.float64).reshape(-1, 5) for rows in per_class]


def calibrate(predictions: list[list[np.ndarray]], labels: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The predictions with each score replaced by the share of boxes so scored that match a given box of their
    class at IoU 0.5 (isotonic regression over every out-of-sample box). ObjectLab reads scores as probabilities
    (it trusts a box above 0.95); a centre-point detector's heatmap peaks are not: they rank well but rarely pass
    0.9. The few wrong labels barely move the fit."""
    from sklearn.isotonic import IsotonicRegression

    scores, matched = [], []
    for prediction, label in zip(predictions, labels, strict=True):
        for k, rows in enumerate(prediction):
            given = label["bboxes"][label["labels"] == k]
            ious = box_ious(rows[:, :4], given) if len(rows) and len(given) else np.zeros((len(rows), 0))
            scores.append(rows[:, 4])
            matched.append((ious >= MATCH_IOU).any(axis=1) if ious.shape[1] else np.zeros(len(rows), bool))
    if not scores or not np.concatenate(matched).any():
        return predictions
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        np.concatenate(scores), np.concatenate(matched).astype(np.float64)
    )
    return [
        [np.column_stack([rows[:, :4], fit.predict(rows[:, 4])]) if len(rows) else rows for rows in prediction]
        for prediction in predictions
    ]


def find_box_issues(
    boxes: list[np.ndarray],
    classes: list[np.ndarray],
    found: list[Detections],
    *,
    num_classes: int,
    score_below: float | None = None,
) -> list[BoxIssue]:
    """Images with likely-wrong boxes (cleanlab's ``find_label_issues``, at its own thresholds: a cautious few, and
    with ``score_below`` every image whose label quality score is at or below it), worst first by ObjectLab's label
    quality score with ``SURE`` as its high-probability threshold; an image with neither a given box nor a confident
    detection is left out. Per image: ``boxes`` (L, 4) corners and ``classes`` (L,) given, ``found`` out-of-sample
    detections in the same frame."""
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import (
        compute_badloc_box_scores,
        compute_overlooked_box_scores,
        compute_swap_box_scores,
        issues_from_scores,
        pool_box_scores_per_image,
    )

    if not boxes:
        return []
    labels: Any = [
        {"bboxes": np.asarray(b, dtype=np.float64).reshape(-1, 4), "labels": np.asarray(c, dtype=np.int64)}
        for b, c in zip(boxes, classes, strict=True)
    ]
    predictions: Any = calibrate([cleanlab_predictions(f, num_classes) for f in found], labels)
    flagged = find_label_issues(labels, predictions)
    per_box = {
        "overlooked": compute_overlooked_box_scores(
            labels=labels, predictions=predictions, high_probability_threshold=SURE
        ),
        "swap": compute_swap_box_scores(labels=labels, predictions=predictions, high_probability_threshold=SURE),
        "badloc": compute_badloc_box_scores(labels=labels, predictions=predictions),
    }
    pooled = {kind: pool_box_scores_per_image(per_box[kind]) for kind in ISSUE_TYPES}
    scores = label_quality_scores(pooled)
    listed = np.flatnonzero(flagged)
    if score_below is not None:
        listed = np.union1d(listed, issues_from_scores(scores, threshold=score_below))
    out = []
    for i in listed[np.argsort(scores[listed], kind="stable")]:
        box_scores = {kind: np.asarray(per_box[kind][i], dtype=np.float64) for kind in ISSUE_TYPES}
        seen = [kind for kind in ISSUE_TYPES if np.isfinite(box_scores[kind]).any()]
        if not seen:  # no box given and none the detector is sure of: nothing to point at
            continue
        type_scores = {kind: float(np.nan_to_num(pooled[kind][i], nan=1.0)) for kind in ISSUE_TYPES}
        kind = min(seen, key=lambda k: type_scores[k])
        worst = int(np.nanargmin(box_scores[kind]))
        out.append(
            _issue(int(i), float(scores[i]), kind, worst, labels[i], predictions[i], type_scores, bool(flagged[i]))
        )
    return out


def label_quality_scores(pooled: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) ObjectLab's label quality score of each image from its pooled (N,) score per kind: their geometric mean
    with equal weights, as ``cleanlab.object_detection.rank.get_label_quality_scores`` combines them (which fixes the
    thresholds of the per-box scores). Low is bad."""
    from cleanlab.internal.constants import TINY_VALUE

    return np.exp(np.mean([np.log(TINY_VALUE + pooled[kind]) for kind in ISSUE_TYPES], axis=0))


def _issue(
    index: int,
    score: float,
    kind: str,
    worst: int,
    label: dict[str, np.ndarray],
    prediction: list[np.ndarray],
    type_scores: dict[str, float],
    flagged: bool,
) -> BoxIssue:
    """The issue of kind ``kind`` about its worst box: a predicted box if overlooked (cleanlab lists them class by
    class), else a given box."""
    candidates = np.concatenate(prediction)
    candidate_classes = np.concatenate([np.full(len(p), k) for k, p in enumerate(prediction)])
    if kind == "overlooked":
        x1, y1, x2, y2 = (float(v) for v in candidates[worst, :4])
        return BoxIssue(index, score, kind, (x1, y1, x2, y2), None, int(candidate_classes[worst]), type_scores, flagged)
    box = label["bboxes"][worst]
    given = suggested = int(label["labels"][worst])
    if kind == "swap":  # the most confident box of another class on it
        touching = (box_ious(box[None, :], candidates[:, :4])[0] > 0) & (candidate_classes != given)
        if touching.any():
            suggested = int(candidate_classes[touching][np.argmax(candidates[touching, 4])])
    x1, y1, x2, y2 = (float(v) for v in box)
    return BoxIssue(index, score, kind, (x1, y1, x2, y2), given, suggested, type_scores, flagged)
