"""ONNX export of detectors, checked in onnxruntime against PyTorch on real test images before it is stored."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from flywheel.serving.detection import MAX_DETECTIONS, STRIDE, box_ious, run_detector
from flywheel.serving.inference import model_version
from flywheel.serving.preprocess import MEAN, PREPROCESSING, STD
from flywheel.training.detectors import CenterNetSmall
from flywheel.training.fit import to_tensor
from storage.models import ModelVersion

MIN_IOU, SCORE_TOLERANCE = 0.99, 1e-4
CHECKED_SCORE = 0.05  # boxes compared: those PyTorch scores at least this


def graph_kind(model: nn.Module) -> str:
    """``centernet``: heatmaps, sizes and offsets decoded in numpy; ``boxes``: boxes, scores and labels from a
    graph that decodes and suppresses itself (see ``flywheel.serving.detection``)."""
    return "centernet" if isinstance(model, CenterNetSmall) else "boxes"


def detector_metadata(model: ModelVersion, network: nn.Module) -> dict[str, str]:
    kind = graph_kind(network)
    outputs = (
        "heatmap (N, K, S/4, S/4) per-class centre scores; size (N, 2, S/4, S/4) box width and height in cells of 4 "
        "px; offset (N, 2, S/4, S/4) the centre's x, y within its cell; embedding (N, D) the features' mean"
        if kind == "centernet"
        else "boxes (M, 4) x1, y1, x2, y2 in input pixels; scores (M,); labels (M,) class index from 1 (0 is the "
        "background)"
    )
    layout = "NCHW float32, RGB, normalized" if kind == "centernet" else "CHW float32, RGB, 0..1 (one image)"
    return {
        "labelwheel.model_version": model_version(model),
        "labelwheel.task": "detection",
        "labelwheel.detector_outputs": kind,
        "labelwheel.labels": json.dumps(model.labels, ensure_ascii=False),
        "labelwheel.input_size": str(model.input_size),
        "labelwheel.input_layout": layout,
        "labelwheel.stride": str(STRIDE),
        "labelwheel.mean": json.dumps([round(float(v), 6) for v in MEAN]),
        "labelwheel.std": json.dumps([round(float(v), 6) for v in STD]),
        "labelwheel.preprocessing": PREPROCESSING
        + ("" if kind == "centernet" else "; this graph takes the 0..1 image and normalizes it itself"),
        "labelwheel.outputs": outputs,
    }


def export_detector(network: nn.Module, input_size: int, *, metadata: dict[str, str]) -> bytes:
    """The detector as ONNX with ``metadata`` in the file's ``metadata_props``, and always the graph's kind
    (``labelwheel.detector_outputs``), which serving reads to decode it."""
    network.eval()
    if isinstance(network, CenterNetSmall):
        program = torch.onnx.export(
            network,
            (torch.zeros(1, 3, input_size, input_size),),
            None,
            input_names=["input"],
            output_names=["heatmap", "size", "offset", "embedding"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            dynamo=True,
            verbose=False,
            report=False,
        )
        assert program is not None
        proto = program.model_proto
    else:  # torchvision's detectors export with the TorchScript-based exporter, NMS and all (one image per run)
        import onnx

        example = [torch.rand(3, input_size, input_size)]
        with torch.no_grad():
            names = list(network(example)[0])  # Faster R-CNN answers boxes, labels, scores; SSD boxes, scores, labels
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network,
                (example,),
                cast(Any, buffer),  # a file object works; the annotation names paths only
                dynamo=False,
                opset_version=17,
                input_names=["input"],
                output_names=names,
            )
        proto = onnx.load_from_string(buffer.getvalue())
    for key, value in {**metadata, "labelwheel.detector_outputs": graph_kind(network)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def compare_with_torch(network: nn.Module, onnx_bytes: bytes, arrays: np.ndarray) -> dict[str, float | int]:
    """On prepared images: every box PyTorch scores at least 0.05 against the onnxruntime box of the same class that
    overlaps it most; the smallest IoU and the largest score difference, and how many boxes were compared."""
    from flywheel.training.detectors import detect

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    ours = run_detector(session, arrays)
    theirs = detect(network, to_tensor(arrays))
    worst_iou, worst_score, compared = 1.0, 0.0, 0
    for reference, exported in zip(theirs, ours, strict=True):
        # When PyTorch hit the cap on boxes, those tied with its last one may be others in onnxruntime: not compared.
        capped = len(reference.scores) >= MAX_DETECTIONS
        floor = max(CHECKED_SCORE, float(reference.scores.min()) + 1e-3 if capped else CHECKED_SCORE)
        for box, score, k in zip(reference.boxes, reference.scores, reference.classes, strict=True):
            if score < floor:
                continue
            compared += 1
            same = exported.classes == k
            if not same.any():
                worst_iou = 0.0
                continue
            ious = box_ious(box[None], exported.boxes[same])[0]
            best = int(np.argmax(ious))
            worst_iou = min(worst_iou, float(ious[best]))
            worst_score = max(worst_score, abs(float(exported.scores[same][best]) - float(score)))
    return {"min_iou": worst_iou, "max_score_difference": worst_score, "boxes_compared": compared}


def export_is_faithful(check: dict[str, float | int]) -> bool:
    return check["min_iou"] >= MIN_IOU and check["max_score_difference"] <= SCORE_TOLERANCE
