"""Boxes of detection answers: checked against the image and the project, clipped, and compared to gold.

A box is {label, x, y, w, h} in pixels of the upright image (EXIF orientation applied: ``Image.upright_size``,
which swaps the stored width and height of a quarter-turned photo): (x, y) its top-left corner, w and h its
size, floats. A box may stick out of the image by at most ``CLIP_TOLERANCE`` px on each side (a drag that ends
on the border overshoots); it is stored clipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from storage.errors import InvalidInput
from storage.models import Image, Project
from storage.names import nfc
from storage.projects import project_settings

CLIP_TOLERANCE = 1.0  # px
GOLD_IOU = 0.5  # a gold box is found when an answer box of its label overlaps it at least this much
MAX_PROBLEMS_SHOWN = 10


@dataclass(frozen=True)
class Box:
    label: str
    x: float
    y: float
    w: float
    h: float


def _problem(box: Box, project: Project, width: int, height: int) -> str | None:
    if nfc(box.label) not in project.labels:
        return f"unknown label {box.label!r} (valid labels: {', '.join(project.labels[:20])})"
    if box.w <= 0 or box.h <= 0:
        return f"w and h must be positive, got w={box.w:g}, h={box.h:g}"
    outside = max(-box.x, -box.y, box.x + box.w - width, box.y + box.h - height)
    if outside > CLIP_TOLERANCE:
        return (
            f"it lies {outside:g} px outside the {width}x{height} upright image (x, y, w, h = {box.x:g}, "
            f"{box.y:g}, {box.w:g}, {box.h:g}); boxes may overshoot the border by at most {CLIP_TOLERANCE:g} px"
        )
    if min(box.x + box.w, width) <= max(box.x, 0) or min(box.y + box.h, height) <= max(box.y, 0):
        return "it has no area inside the image"
    return None


def _clipped(box: Box, width: int, height: int) -> dict[str, Any]:
    x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
    x1, y1 = min(box.x + box.w, float(width)), min(box.y + box.h, float(height))
    w = box.w if (x0, x1) == (box.x, box.x + box.w) else x1 - x0
    h = box.h if (y0, y1) == (box.y, box.y + box.h) else y1 - y0
    return {"label": nfc(box.label), "x": x0, "y": y0, "w": w, "h": h}


def check_boxes(project: Project, image: Image, boxes: Sequence[Box]) -> list[dict[str, Any]]:
    """The boxes as stored (labels in NFC, clipped to the image); InvalidInput naming each offending box by index."""
    limit = project_settings(project).max_boxes
    if len(boxes) > limit:
        raise InvalidInput(
            f"{len(boxes)} boxes given for image {image.id}; project {project.id} takes at most {limit} per image "
            f"(setting max_boxes): boxes {limit} to {len(boxes) - 1} are too many",
            code="too_many_boxes",
            details={"boxes": len(boxes), "max_boxes": limit},
        )
    width, height = image.upright_size
    problems = [(i, p) for i, box in enumerate(boxes) if (p := _problem(box, project, width, height)) is not None]
    if problems:
        shown = "; ".join(f"box {i}: {p}" for i, p in problems[:MAX_PROBLEMS_SHOWN])
        more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        raise InvalidInput(
            f"invalid boxes for image {image.id}: {shown}{more}; boxes are counted from 0",
            code="invalid_boxes",
            details=[{"box": i, "message": p} for i, p in problems],
        )
    return [_clipped(box, width, height) for box in boxes]


def raw_boxes(boxes: Sequence[Box]) -> list[dict[str, Any]]:
    """The boxes as the request gave them, for the idempotency hash."""
    return [asdict(box) for box in boxes]


def same_boxes(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    """The same set of boxes, in any order."""

    def key(box: Mapping[str, Any]) -> tuple[Any, ...]:
        return (box["label"], box["x"], box["y"], box["w"], box["h"])

    return sorted(map(key, a)) == sorted(map(key, b))


def iou(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Intersection over union of two boxes, 0 to 1."""
    w = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    inter = max(w, 0.0) * max(h, 0.0)
    union = a["w"] * a["h"] + b["w"] * b["h"] - inter
    return inter / union if union > 0 else 0.0


def matches_gold(answer: Sequence[Mapping[str, Any]], gold: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an answer finds every gold box and nothing else: a greedy one-to-one match of same-label pairs by
    decreasing IoU, each pair at least ``GOLD_IOU``. (An optimal matcher may replace this greedy one.)"""
    if len(answer) != len(gold):
        return False
    pairs = sorted(
        ((iou(a, g), i, j) for i, a in enumerate(answer) for j, g in enumerate(gold) if a["label"] == g["label"]),
        reverse=True,
    )
    used_a: set[int] = set()
    used_g: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < GOLD_IOU:
            break
        if i not in used_a and j not in used_g:
            used_a.add(i)
            used_g.add(j)
    return len(used_g) == len(gold)
