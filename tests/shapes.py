"""Tiny synthetic detection scenes: 1-3 squares and discs on a noisy canvas, as PNG files with their true boxes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

SHAPE_LABELS = ["square", "disc"]


def scene(rng: np.random.Generator, *, side: int = 64, most: int = 3) -> tuple[bytes, list[dict]]:
    """One PNG of ``side`` px and its boxes ``{label, x, y, w, h}``; shapes do not overlap."""
    canvas = Image.fromarray(rng.integers(0, 60, (side, side, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    boxes: list[dict] = []
    for _ in range(int(rng.integers(1, most + 1))):
        for _attempt in range(20):
            w = h = int(rng.integers(side // 6, side // 3))
            x, y = int(rng.integers(0, side - w)), int(rng.integers(0, side - h))
            if all(x + w <= b["x"] or b["x"] + b["w"] <= x or y + h <= b["y"] or b["y"] + b["h"] <= y for b in boxes):
                break
        else:
            continue
        label = SHAPE_LABELS[int(rng.integers(2))]
        colour = tuple(int(c) for c in rng.integers(120, 256, 3))
        (draw.rectangle if label == "square" else draw.ellipse)([x, y, x + w - 1, y + h - 1], fill=colour)
        boxes.append({"label": label, "x": float(x), "y": float(y), "w": float(w), "h": float(h)})
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue(), boxes


def scenes(count: int, *, seed: int = 0, side: int = 64) -> list[tuple[bytes, list[dict]]]:
    rng = np.random.default_rng(seed)
    return [scene(rng, side=side) for _ in range(count)]
