"""Turning a detector's raw outputs into boxes, with numpy only (the API process never loads torch).

Two kinds of detector graphs exist. ``centernet`` (the small default detector) outputs per-class centre heatmaps
and box sizes and offsets at stride 4; peaks are found, decoded and kept by class-wise NMS here, the same code
for evaluation in the training job and for serving. ``boxes`` (torchvision's detectors) has decoding and NMS in
the graph and outputs boxes, scores and 1-based class indices for one image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

from flywheel.serving.preprocess import normalize

CENTERNET = "centernet_small"  # the small default detector, the one whose heads a refresh fine-tunes
STRIDE = 4
MAX_DETECTIONS = 100
MIN_SCORE = 0.01  # what evaluation sees (mAP needs the low-scored tail); pre-labels keep far fewer
SHOWN_SCORE = 0.3  # the boxes /predict answers and annotators are shown; per-image F1 and error analysis read these
NMS_IOU = 0.7


@dataclass(frozen=True)
class ScoredBox:
    label: str
    x: float
    y: float
    w: float
    h: float
    score: float


@dataclass(frozen=True)
class Detections:
    """One image's detections in the pixels of the model's square input: (N, 4) x1, y1, x2, y2, (N,) scores,
    (N,) class indices from 0, best first; with a centre-point detector, (N, K) every class's score at each box's
    centre (mining reads how sure the class is), and the image's (D,) embedding."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    class_scores: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def scaled(self, width: float, height: float, input_size: int) -> Detections:
        """The same boxes in pixels of a ``width`` x ``height`` image (the input was it, resized to a square)."""
        factor = np.array([width, height, width, height], dtype=np.float64) / input_size
        return replace(self, boxes=self.boxes * factor)

    def above(self, min_score: float) -> Detections:
        keep = self.scores >= min_score
        return replace(
            self,
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            classes=self.classes[keep],
            class_scores=None if self.class_scores is None else self.class_scores[keep],
        )


def box_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of (N, 4) and (M, 4) corner arrays."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, *, iou: float = NMS_IOU) -> np.ndarray:
    """Positions kept by greedy class-wise non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    suppressed = np.zeros(len(scores), dtype=bool)
    overlaps = box_ious(boxes, boxes) if len(boxes) else np.zeros((0, 0))
    for i in order:
        if suppressed[i]:
            continue
        kept.append(int(i))
        suppressed |= (overlaps[i] > iou) & (classes == classes[i])
    return np.array(kept, dtype=np.int64)


def _peaks(heatmap: np.ndarray) -> np.ndarray:
    """Where a (K, H, W) heatmap equals the maximum of its 3x3 neighbourhood (CenterNet's max-pool NMS)."""
    padded = np.pad(heatmap, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    height, width = heatmap.shape[1:]
    shifted = [padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
    return heatmap >= np.max(shifted, axis=0)


def decode_centernet(
    heatmap: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    embedding: np.ndarray | None = None,
    *,
    max_detections: int = MAX_DETECTIONS,
    min_score: float = MIN_SCORE,
) -> list[Detections]:
    """Boxes from a batch of CenterNet outputs: ``heatmap`` (N, K, H, W) sigmoid scores, ``size`` and ``offset``
    (N, 2, H, W) in output cells (width, height; x, y). A box is a heatmap peak, its centre the cell plus the
    offset, its size read at the peak; at most ``max_detections`` per image, class-wise NMS after."""
    out = []
    embeddings = embedding if embedding is not None else [None] * len(heatmap)
    for heat, wh, off, vector in zip(heatmap, size, offset, embeddings, strict=True):
        candidates = np.flatnonzero((_peaks(heat) & (heat >= min_score)).ravel())
        scores = heat.ravel()[candidates]
        best = candidates[np.argsort(-scores, kind="stable")[:max_detections]]
        classes, cells = np.divmod(best, heat.shape[1] * heat.shape[2])
        ys, xs = np.divmod(cells, heat.shape[2])
        cx, cy = (xs + off[0, ys, xs]) * STRIDE, (ys + off[1, ys, xs]) * STRIDE
        w, h = np.maximum(wh[0, ys, xs], 0) * STRIDE, np.maximum(wh[1, ys, xs], 0) * STRIDE
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float64)
        scores = heat.ravel()[best].astype(np.float64)
        kept = nms(boxes, scores, classes)
        every_class = heat[:, ys, xs].T.astype(np.float64)  # (M, K): each class's score at each box's centre
        out.append(
            Detections(
                boxes[kept].reshape(-1, 4),
                scores[kept],
                classes[kept].astype(np.int64),
                every_class[kept].reshape(-1, heat.shape[0]),
                vector,
            )
        )
    return out


def from_box_outputs(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
    """A torchvision detector's outputs (its class 0 is the background) as ``Detections``."""
    order = np.argsort(-scores, kind="stable")[:MAX_DETECTIONS]
    return Detections(
        boxes[order].astype(np.float64).reshape(-1, 4),
        scores[order].astype(np.float64),
        labels[order].astype(np.int64) - 1,
    )


def run_detector(session: ort.InferenceSession, arrays: np.ndarray, *, batch: int = 64) -> list[Detections]:
    """Detections of an exported detector (its kind read from the file's metadata) for prepared HxWx3 uint8
    images, in input pixels."""
    kind = session.get_modelmeta().custom_metadata_map.get("labelwheel.detector_outputs")
    out: list[Detections] = []
    if kind == "centernet":
        for start in range(0, len(arrays), batch):
            heat, size, offset, embedding = session.run(
                ["heatmap", "size", "offset", "embedding"], {"input": normalize(arrays[start : start + batch])}
            )
            out.extend(decode_centernet(heat, size, offset, embedding))
        return out
    if kind != "boxes":
        raise ValueError(f"not a labelwheel detector (labelwheel.detector_outputs is {kind!r})")
    for array in arrays:
        image = np.ascontiguousarray(array.astype(np.float32).transpose(2, 0, 1) / 255.0)
        boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"input": image})
        out.append(from_box_outputs(boxes, scores, labels))
    return out


def scored_boxes(
    found: Detections, *, labels: list[str], width: int, height: int, input_size: int, min_score: float = SHOWN_SCORE
) -> list[ScoredBox]:
    """One image's detections scoring at least ``min_score`` as boxes in pixels of the upright ``width`` x
    ``height`` image, clipped to it, best first."""
    shown = found.above(min_score).scaled(width, height, input_size)
    out = []
    for (x1, y1, x2, y2), score, k in zip(shown.boxes, shown.scores, shown.classes, strict=True):
        x1, x2 = float(np.clip(x1, 0, width)), float(np.clip(x2, 0, width))
        y1, y2 = float(np.clip(y1, 0, height)), float(np.clip(y2, 0, height))
        if x2 - x1 > 0 and y2 - y1 > 0:
            out.append(
                ScoredBox(
                    labels[int(k)],
                    round(x1, 2),
                    round(y1, 2),
                    round(x2 - x1, 2),
                    round(y2 - y1, 2),
                    round(float(score), 4),
                )
            )
    return out
