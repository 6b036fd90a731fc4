"""Boxes of detection answers as people submit them: checked against the image and the project, clipped, and
compared to gold (the box math itself, IoU and matching, is ``annotation.boxes``).

A box is {label, x, y, w, h} in pixels of the upright image (EXIF orientation applied: ``Image.upright_size``,
which swaps the stored width and height of a quarter-turned photo): (x, y) its top-left corner, w and h its
size, floats. A box may stick out of the image by at most ``CLIP_TOLERANCE`` px on each side (a drag that ends
on the border overshoots); it is stored clipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from annotation.boxes import Box, match
from storage.errors import InvalidInput
from storage.models import Image, Project
from storage.names import nfc
from storage.projects import project_settings

CLIP_TOLERANCE = 1.0  # px
GOLD_IOU = 0.5  # a gold box is found when an answer box of its label overlaps it at least this much
MAX_PROBLEMS_SHOWN = 10


@dataclass(frozen=True)
class DrawnBox:
    """A box as submitted, not yet checked (its size may be zero or negative: ``check_boxes`` says so)."""

    label: str
    x: float
    y: float
    w: float
    h: float


def _problem(box: DrawnBox, project: Project, width: int, height: int) -> str | None:
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


def _clipped(box: DrawnBox, width: int, height: int) -> dict[str, Any]:
    x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
    x1, y1 = min(box.x + box.w, float(width)), min(box.y + box.h, float(height))
    w = box.w if (x0, x1) == (box.x, box.x + box.w) else x1 - x0
    h = box.h if (y0, y1) == (box.y, box.y + box.h) else y1 - y0
    return {"label": nfc(box.label), "x": x0, "y": y0, "w": w, "h": h}


def check_boxes(project: Project, image: Image, boxes: Sequence[DrawnBox]) -> list[dict[str, Any]]:
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


def raw_boxes(boxes: Sequence[DrawnBox]) -> list[dict[str, Any]]:
    """The boxes as the request gave them, for the idempotency hash."""
    return [asdict(box) for box in boxes]


def same_boxes(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    """The same set of boxes, in any order."""

    def key(box: Mapping[str, Any]) -> tuple[Any, ...]:
        return (box["label"], box["x"], box["y"], box["w"], box["h"])

    return sorted(map(key, a)) == sorted(map(key, b))


def matches_gold(answer: Sequence[Mapping[str, Any]], gold: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an answer finds every gold box and nothing else: per label, the optimal one-to-one IoU matching
    (``annotation.boxes.match``) pairs every box on both sides at ``GOLD_IOU`` or more."""
    if len(answer) != len(gold):
        return False
    for label in {box["label"] for box in gold} | {box["label"] for box in answer}:
        mine = [Box(**box) for box in answer if box["label"] == label]
        theirs = [Box(**box) for box in gold if box["label"] == label]
        matching = match(mine, theirs, iou_threshold=GOLD_IOU)
        if matching.unmatched_a or matching.unmatched_b:
            return False
    return True
