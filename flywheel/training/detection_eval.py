"""Evaluating a detector on the fixed test split, and the paired test that decides its promotion.

COCO's figures come from pycocotools itself (the reference implementation); per-image F1 at IoU 0.5, the error
analysis (the TIDE categories) and the baseline are computed here, on the same boxes.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.stats import wilcoxon

from annotation.boxes import assign
from flywheel.serving.detection import SHOWN_SCORE, Detections, box_ious
from flywheel.training.detection_fit import BoxTargets
from flywheel.training.evaluation import PROMOTION_ALPHA

OPERATING_SCORE = SHOWN_SCORE  # the boxes an annotator is shown: per-image F1 and the error analysis read these
MATCH_IOU = 0.5
LOCALIZATION_IOU = 0.1  # a box overlapping an object of its class this much, but below MATCH_IOU, is badly placed
BASELINE_RULE = (
    "every class's mean training box (in image-relative coordinates) on every test image, scored by the class's "
    "share of training boxes: what knowing only where objects usually are gives"
)


@dataclass(frozen=True)
class CocoFigures:
    map: float  # mAP@[.5:.95], COCO's AP
    map50: float
    map75: float
    per_class: dict[str, dict[str, float | int | None]]  # label -> ap, ap50, recall (at IoU .5, 100 boxes), objects


def coco_figures(truth: list[BoxTargets], detections: list[Detections], *, labels: list[str]) -> CocoFigures:
    """COCO's mAP@[.5:.95], mAP@.5, mAP@.75, and per class AP, AP@.5 and recall at IoU 0.5, with pycocotools, over
    all images. A class with no test object has None figures (COCO's -1)."""
    images = [{"id": n + 1, "width": 1, "height": 1} for n in range(len(truth))]
    boxes = [(n, b, c) for n, t in enumerate(truth) for b, c in zip(t.boxes, t.classes, strict=True)]
    annotations = [
        {
            "id": k + 1,
            "image_id": n + 1,
            "category_id": int(c) + 1,
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "area": float((b[2] - b[0]) * (b[3] - b[1])),
            "iscrowd": 0,
        }
        for k, (n, b, c) in enumerate(boxes)
    ]
    results = [
        {
            "image_id": n + 1,
            "category_id": int(c) + 1,
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s),
        }
        for n, d in enumerate(detections)
        for b, s, c in zip(d.boxes, d.scores, d.classes, strict=True)
    ]
    categories = [{"id": k + 1, "name": label} for k, label in enumerate(labels)]
    if not annotations or not results:
        empty: dict[str, float | int | None] = {"ap": None, "ap50": None, "recall": None, "objects": 0}
        per_class = {label: {**empty, "objects": _objects(truth, k)} for k, label in enumerate(labels)}
        for figures in per_class.values():
            if figures["objects"]:
                figures.update(ap=0.0, ap50=0.0, recall=0.0)
        return CocoFigures(0.0, 0.0, 0.0, per_class)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations, "categories": categories}
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # IoU, recall, class (all areas, 100 boxes)
    recall = evaluation.eval["recall"][:, :, 0, -1]  # IoU, class
    per_class = {}
    for k, label in enumerate(labels):
        curve = precision[:, :, k]
        defined = curve[curve > -1]
        per_class[label] = {
            "ap": float(defined.mean()) if defined.size else None,
            "ap50": float(curve[0][curve[0] > -1].mean()) if (curve[0] > -1).any() else None,
            "recall": float(recall[0, k]) if recall[0, k] > -1 else None,
            "objects": _objects(truth, k),
        }
    stats = evaluation.stats
    return CocoFigures(float(max(stats[0], 0)), float(max(stats[1], 0)), float(max(stats[2], 0)), per_class)


def _objects(truth: list[BoxTargets], k: int) -> int:
    return int(sum((t.classes == k).sum() for t in truth))


def _class_matches(truth: BoxTargets, found: Detections) -> list[tuple[int, int]]:
    """One-to-one (truth, detection) pairs of the same class at IoU >= 0.5 (most pairs, then the best fit)."""
    if not len(truth.boxes) or not len(found.boxes):
        return []
    ious = box_ious(truth.boxes.astype(np.float64), found.boxes)
    ious[truth.classes[:, None] != found.classes[None, :]] = 0.0
    return [(i, j) for i, j, _ in assign(ious, MATCH_IOU)]


def image_f1(truth: BoxTargets, found: Detections) -> float:
    """F1 of one image's detections (those scoring at least ``OPERATING_SCORE``) against its boxes at IoU 0.5, class
    and all; 1.0 when both are empty."""
    shown = found.above(OPERATING_SCORE)
    if not len(truth.boxes) and not len(shown.boxes):
        return 1.0
    matched = len(_class_matches(truth, shown))
    return 2 * matched / (len(truth.boxes) + len(shown.boxes))


def image_errors(truth: BoxTargets, found: Detections) -> dict[str, int]:
    """What went wrong on one image at the operating score, in TIDE's terms (Bolya et al. 2020): ``missed`` objects
    no box comes near, ``false_boxes`` on background, ``wrong_class`` (a box on an object of another class) and
    ``poor_localization`` (on an object of its class, below IoU 0.5)."""
    shown = found.above(OPERATING_SCORE)
    pairs = _class_matches(truth, shown)
    free_truth = sorted(set(range(len(truth.boxes))) - {i for i, _ in pairs})
    free_found = sorted(set(range(len(shown.boxes))) - {j for _, j in pairs})
    errors = {"missed": 0, "false_boxes": 0, "wrong_class": 0, "poor_localization": 0}
    explained: set[int] = set()
    ious = (
        box_ious(truth.boxes.astype(np.float64), shown.boxes)
        if len(truth.boxes) and len(shown.boxes)
        else np.zeros((len(truth.boxes), len(shown.boxes)))
    )
    for j in free_found:
        overlaps = ious[free_truth, j] if free_truth else np.zeros(0)
        same = np.array([truth.classes[i] == shown.classes[j] for i in free_truth], dtype=bool)
        if overlaps.size and (overlaps[~same] >= MATCH_IOU).any():
            errors["wrong_class"] += 1
            explained.add(free_truth[int(np.argmax(np.where(~same, overlaps, -1)))])
        elif overlaps.size and (overlaps[same] >= LOCALIZATION_IOU).any():
            errors["poor_localization"] += 1
            explained.add(free_truth[int(np.argmax(np.where(same, overlaps, -1)))])
        else:
            errors["false_boxes"] += 1
    errors["missed"] = len(set(free_truth) - explained)
    return errors


def baseline_detections(train: list[BoxTargets], count: int, *, num_classes: int) -> list[Detections]:
    """``BASELINE_RULE``'s detections for ``count`` test images (boxes in input pixels, as the model's: every image
    is resized to the same square, so these are image-relative)."""
    boxes, scores, classes = [], [], []
    everything = sum(len(t.classes) for t in train)
    for k in range(num_classes):
        own = [b for t in train for b, c in zip(t.boxes, t.classes, strict=True) if c == k]
        if own:
            boxes.append(np.mean(own, axis=0))
            scores.append(len(own) / everything)
            classes.append(k)
    one = Detections(
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
        np.array(scores, dtype=np.float64),
        np.array(classes, dtype=np.int64),
    )
    return [one] * count


@dataclass(frozen=True)
class DetectionDecision:
    promote: bool
    rule: str  # "not worse", "below the champion", "significantly worse"
    candidate_map50: float
    champion_map50: float
    tolerance: float
    candidate_mean_f1: float
    champion_mean_f1: float
    statistic: float | None  # Wilcoxon's signed-rank statistic on per-image F1 differences (None: no difference)
    p_value: float
    reason: str


def decide_detection_promotion(
    *,
    champion_f1: np.ndarray,
    candidate_f1: np.ndarray,
    champion_map50: float,
    candidate_map50: float,
    tolerance: float,
) -> DetectionDecision:
    """On the same test images, a candidate detector replaces the champion unless a Wilcoxon signed-rank test on the
    paired per-image F1 at IoU 0.5 finds it significantly worse (p < 0.05), or its mAP@.5 is below the champion's by
    more than ``tolerance`` (the point estimate: on a small test split a real regression is rarely significant)."""
    if champion_f1.shape != candidate_f1.shape:
        raise ValueError("both detectors must be judged on the same test images")
    differences = candidate_f1 - champion_f1
    if np.any(differences != 0):
        test = wilcoxon(candidate_f1, champion_f1, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(test.statistic), float(test.pvalue)
    else:
        statistic, p_value = None, 1.0
    candidate, held = float(candidate_f1.mean()), float(champion_f1.mean())
    figures = (
        f"mAP@.5 {candidate_map50:.3f} vs the champion's {champion_map50:.3f}; mean per-image F1@.5 {candidate:.3f} vs "
        f"{held:.3f} (Wilcoxon p={p_value:.3g}, {len(differences)} test images)"
    )
    if candidate < held and p_value < PROMOTION_ALPHA:
        rule = "significantly worse"
    elif candidate_map50 < champion_map50 - tolerance - 1e-12:
        rule = "below the champion"
    else:
        rule = "not worse"
    reason = {
        "significantly worse": f"significantly worse: {figures}",
        "below the champion": f"below the champion by more than {tolerance:.3f} mAP@.5: {figures}",
        "not worse": f"not worse (within {tolerance:.3f}): {figures}",
    }[rule]
    return DetectionDecision(
        rule == "not worse",
        rule,
        candidate_map50,
        champion_map50,
        tolerance,
        candidate,
        held,
        statistic,
        p_value,
        reason,
    )


def error_analysis(
    truth: list[BoxTargets], detections: list[Detections], image_ids: list[int]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Totals of each error kind over the test split, and every test image with an error and its counts, worst
    first."""
    totals = {"missed": 0, "false_boxes": 0, "wrong_class": 0, "poor_localization": 0}
    images = []
    for image_id, t, d in zip(image_ids, truth, detections, strict=True):
        errors = image_errors(t, d)
        for kind, count in errors.items():
            totals[kind] += count
        if any(errors.values()):
            images.append({"image_id": image_id, **errors})
    images.sort(key=lambda e: (-sum(v for k, v in e.items() if k != "image_id"), e["image_id"]))
    return totals, images
