"""Consensus boxes and box scorecards on a simulated crowd, against a plain reference in the same run.

Scenes are boxes only, no pixels: this measures the box math of ``annotation/boxes.py``, which
never looks at an image. Each scene is a 64-128 px canvas with 1-4 objects of 12-32 px, a class
from the ten digits each, about half of them placed touching an earlier one. Five annotators,
three per image (``overlap``), all with a small base rate of slips (3% of objects missed, a stray
box on 3% of images, 2% of classes wrong, edges jittered by 4% of the object's size):

* careful: the base rates only;
* misser: misses 30% of objects;
* spurious: adds 1.2 random boxes per image on average;
* loose: pushes every edge out by 8-16% of the object's size (IoU 0.57-0.74 with the object);
* merger: draws each pair of touching objects as one box around both.

Measured against the known boxes: box F1 at IoU 0.5 (a box counts when matched and of the right
class) and the mean IoU of matched boxes, for ``consensus_boxes`` (Hungarian clustering, majority
quorum, median corners), for the plain reference (each box, in drawing order, joins the cluster
whose mean outline it overlaps most at IoU >= 0.5, if that cluster has no box of its annotator yet;
majority quorum, majority class, mean corners) and for each single annotator on the images they
labeled. Flags: each annotator's ``box_scorecard`` against the consensus after every 10 of their
images; the first time each flag appears.

Aims (../shared/design/TARGETS.md): consensus F1 above the best single annotator and at least the
reference's; every faulty annotator flagged with the right flag within 100 of their images; the
careful annotator never flagged. Medians over ``--seeds`` crowds; the aims must hold on every seed.

Run ``./dev bench box_consensus`` (``--images``, ``--seeds``, ``--overlap``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from annotation.boxes import Box, box_scorecard, consensus_boxes, iou_matrix, match

LABELS = [str(d) for d in range(10)]
CROWD = ("careful", "misser", "spurious", "loose", "merger")
RIGHT_FLAG = {"misser": "missed_objects", "spurious": "extra_boxes", "loose": "loose_boxes", "merger": "merges"}
MISS, STRAY, WRONG_CLASS, JITTER = 0.03, 0.03, 0.02, 0.04  # everyone's slips
MISSER_MISS, SPURIOUS_RATE, LOOSE_PUSH = 0.30, 1.2, (0.08, 0.16)
CHECK_EVERY, FLAG_WITHIN = 10, 100

Scene = tuple[list[Box], list[tuple[int, int]], tuple[int, int]]  # objects, touching pairs, canvas (w, h)


def _overlaps(box: Box, others: list[Box]) -> bool:
    return any(box.x < o.x + o.w and o.x < box.x + box.w and box.y < o.y + o.h and o.y < box.y + box.h for o in others)


def scene(rng: np.random.Generator) -> Scene:
    width, height = (int(v) for v in rng.integers(64, 129, 2))
    objects: list[Box] = []
    touching: list[tuple[int, int]] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(50):
            w, h = (float(v) for v in rng.integers(12, 33, 2))
            neighbour = int(rng.integers(len(objects))) if objects and rng.random() < 0.5 else None
            if neighbour is None:
                x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            else:  # touching its right or bottom edge, roughly aligned
                n = objects[neighbour]
                if rng.random() < 0.5:
                    x, y = n.x + n.w, n.y + float(rng.uniform(-0.2, 0.2)) * n.h
                else:
                    x, y = n.x + float(rng.uniform(-0.2, 0.2)) * n.w, n.y + n.h
            box = Box(LABELS[int(rng.integers(10))], x, y, w, h)
            if x >= 0 and y >= 0 and x + w <= width and y + h <= height and not _overlaps(box, objects):
                if neighbour is not None:
                    touching.append((neighbour, len(objects)))
                objects.append(box)
                break
    return objects, touching, (width, height)


def _outline(x1: float, y1: float, x2: float, y2: float, label: str, canvas: tuple[int, int]) -> Box:
    x1, y1 = max(x1, 0.0), max(y1, 0.0)
    x2, y2 = min(x2, canvas[0]), min(y2, canvas[1])
    return Box(label, x1, y1, max(x2 - x1, 1.0), max(y2 - y1, 1.0))


def _touching_groups(count: int, touching: list[tuple[int, int]]) -> list[list[int]]:
    """Objects connected by touching, each group once: what the merger outlines as one box."""
    group = list(range(count))
    for a, b in touching:  # b was placed after a, so relabeling b's group to a's keeps one label per group
        old, new = group[b], group[a]
        group = [new if g == old else g for g in group]
    return [[i for i in range(count) if group[i] == g] for g in sorted(set(group))]


def draw(kind: str, truth: Scene, rng: np.random.Generator) -> list[Box]:
    objects, touching, canvas = truth
    targets = _touching_groups(len(objects), touching) if kind == "merger" else [[i] for i in range(len(objects))]
    miss = MISSER_MISS if kind == "misser" else MISS
    boxes = []
    for group in targets:
        if rng.random() < miss:
            continue
        parts = [objects[i] for i in group]
        x1, y1 = min(p.x for p in parts), min(p.y for p in parts)
        x2, y2 = max(p.x + p.w for p in parts), max(p.y + p.h for p in parts)
        w, h = x2 - x1, y2 - y1
        dx1, dy1, dx2, dy2 = rng.normal(0, JITTER, 4) * [w, h, w, h]
        if kind == "loose":
            push = rng.uniform(*LOOSE_PUSH, 4) * [w, h, w, h]
            dx1, dy1, dx2, dy2 = dx1 - push[0], dy1 - push[1], dx2 + push[2], dy2 + push[3]
        label = parts[0].label if rng.random() >= WRONG_CLASS else LABELS[int(rng.integers(10))]
        boxes.append(_outline(x1 + dx1, y1 + dy1, x2 + dx2, y2 + dy2, label, canvas))
    strays = int(rng.poisson(SPURIOUS_RATE)) if kind == "spurious" else int(rng.random() < STRAY)
    for _ in range(strays):
        w, h = (float(v) for v in rng.integers(12, 33, 2))
        x, y = float(rng.uniform(0, canvas[0] - w)), float(rng.uniform(0, canvas[1] - h))
        boxes.append(Box(LABELS[int(rng.integers(10))], x, y, w, h))
    return boxes


def reference_consensus(boxes_by_annotator: dict[str, list[Box]]) -> list[Box]:
    """Greedy clustering in drawing order, majority quorum, majority class, mean corners."""
    quorum = len(boxes_by_annotator) // 2 + 1
    clusters: list[list[tuple[str, Box]]] = []
    for annotator, boxes in boxes_by_annotator.items():
        for box in boxes:
            open_ = [c for c in clusters if annotator not in {k for k, _ in c}]
            means = [Box("", *_mean_xywh([b for _, b in c])) for c in open_]
            scores = iou_matrix([box], means)[0] if means else np.array([])
            if len(scores) and scores.max() >= 0.5:
                open_[int(scores.argmax())].append((annotator, box))
            else:
                clusters.append([(annotator, box)])
    return [
        Box(Counter(b.label for _, b in c).most_common(1)[0][0], *_mean_xywh([b for _, b in c]))
        for c in clusters
        if len(c) >= quorum
    ]


def _mean_xywh(boxes: list[Box]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = np.mean([b.corners for b in boxes], axis=0)
    return float(x1), float(y1), float(x2 - x1), float(y2 - y1)


@dataclass
class Score:
    """Boxes against the truth: F1 at IoU 0.5 with the right class, mean IoU of matched boxes."""

    hits: int = 0
    predicted: int = 0
    true: int = 0
    ious: list[float] = field(default_factory=list)

    def add(self, predicted: list[Box], truth: list[Box]) -> None:
        matching = match(predicted, truth)
        self.hits += sum(predicted[i].label == truth[j].label for i, j, _ in matching.pairs)
        self.ious += [value for _, _, value in matching.pairs]
        self.predicted += len(predicted)
        self.true += len(truth)

    @property
    def f1(self) -> float:
        return 2 * self.hits / (self.predicted + self.true)

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.ious))


@dataclass
class Run:
    scores: dict[str, Score]
    first_flags: dict[str, dict[str, int]]  # annotator -> flag -> their images when it first appeared
    weak: Counter[str]  # reason -> images
    weak_share: float
    ms_consensus: float
    ms_reference: float


def crowd_run(*, images: int, overlap: int, seed: int) -> Run:
    rng = np.random.default_rng(seed)
    scenes = [scene(rng) for _ in range(images)]
    scores = {name: Score() for name in ("consensus", "reference", *CROWD)}
    seen: dict[str, list[tuple[list[Box], list[Box]]]] = {name: [] for name in CROWD}  # (theirs, consensus)
    weak, reasons, timing = 0, Counter[str](), {"consensus": 0.0, "reference": 0.0}
    for truth in scenes:
        drawn = {CROWD[w]: draw(CROWD[w], truth, rng) for w in rng.choice(len(CROWD), overlap, replace=False)}
        started = time.perf_counter()
        result = consensus_boxes(drawn, label_order=LABELS)
        timing["consensus"] += time.perf_counter() - started
        started = time.perf_counter()
        reference = reference_consensus(drawn)
        timing["reference"] += time.perf_counter() - started
        consensus = [c.box for c in result.boxes]
        weak += bool(result.weak)
        reasons.update(result.weak)
        scores["consensus"].add(consensus, truth[0])
        scores["reference"].add(reference, truth[0])
        for name, boxes in drawn.items():
            scores[name].add(boxes, truth[0])
            seen[name].append((boxes, consensus))
    first_flags: dict[str, dict[str, int]] = {}
    for name, pairs in seen.items():
        flags = first_flags.setdefault(name, {})
        for n in range(CHECK_EVERY, len(pairs) + 1, CHECK_EVERY):
            card = box_scorecard([theirs for theirs, _ in pairs[:n]], [ref for _, ref in pairs[:n]])
            for flag in card.flags:
                flags.setdefault(flag.flag, n)
    ms = {key: 1000 * value / images for key, value in timing.items()}
    return Run(scores, first_flags, reasons, weak / images, ms["consensus"], ms["reference"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="overlapped images per crowd")
    parser.add_argument("--seeds", type=int, default=3, help="crowds, each with its own scenes and answers")
    parser.add_argument("--overlap", type=int, default=3, help="annotators per image, of the five")
    args = parser.parse_args()
    print(f"box consensus: {args.images} images, {args.overlap} of {len(CROWD)} annotators each, {args.seeds} seeds")
    print(f"python {platform.python_version()}, {platform.machine()}")
    runs = [crowd_run(images=args.images, overlap=args.overlap, seed=seed) for seed in range(args.seeds)]

    print(f"\n{'boxes':<12} {'F1@0.5':>8} {'mean IoU':>9} {'F1 / reference':>15}   (medians over seeds)")
    for name in ("consensus", "reference", *CROWD):
        f1 = statistics.median(r.scores[name].f1 for r in runs)
        ratio = statistics.median(r.scores[name].f1 / r.scores["reference"].f1 for r in runs)
        mean_iou = statistics.median(r.scores[name].mean_iou for r in runs)
        print(f"{name:<12} {f1:>8.3f} {mean_iou:>9.3f} {ratio:>15.3f}")
    reasons = sorted({reason for r in runs for reason in r.weak})
    shares = ", ".join(
        f"{reason} {statistics.median(r.weak[reason] / args.images for r in runs):.0%}" for reason in reasons
    )
    print(
        f"\nimages sent to review (weak consensus): {statistics.median(r.weak_share for r in runs):.0%} "
        f"(an image can have several reasons: {shares})"
    )
    print(
        f"ms per image: consensus {statistics.median(r.ms_consensus for r in runs):.2f}, "
        f"reference {statistics.median(r.ms_reference for r in runs):.2f}"
    )

    print("\nflags: first seen after this many of the annotator's images, per seed")
    for name in CROWD:
        found = sorted({flag for r in runs for flag in r.first_flags[name]})
        cells = [f"{flag} " + "/".join(str(r.first_flags[name].get(flag, "-")) for r in runs) for flag in found]
        print(f"  {name:<10} {', '.join(cells) or 'none'}")

    best_single = [max(r.scores[name].f1 for name in CROWD) for r in runs]
    aims = {
        "consensus F1 above the best single annotator": all(
            r.scores["consensus"].f1 > best for r, best in zip(runs, best_single, strict=True)
        ),
        "consensus F1 at least the reference's": all(
            r.scores["consensus"].f1 >= r.scores["reference"].f1 for r in runs
        ),
        f"each faulty annotator's right flag within {FLAG_WITHIN} images": all(
            r.first_flags[name].get(flag, FLAG_WITHIN + 1) <= FLAG_WITHIN
            for r in runs
            for name, flag in RIGHT_FLAG.items()
        ),
        "careful annotator never flagged": all(not r.first_flags["careful"] for r in runs),
    }
    print()
    for aim, met in aims.items():
        print(f"{'met' if met else 'NOT MET':>8}  {aim}")


if __name__ == "__main__":
    main()
