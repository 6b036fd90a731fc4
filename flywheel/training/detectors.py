"""Detection architectures: a small centre-point detector for small images on a CPU, and torchvision's
``fasterrcnn_mobilenet_v3_large_320_fpn`` and ``ssdlite320_mobilenet_v3_large`` for larger ones.

Every detector here takes a batch of square preprocessed images and answers the same two questions: its training
loss against boxes in input pixels (``detection_loss``), and its detections (``detect``). Weights start random;
pretrained ones come only from a local file (nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from flywheel.serving.detection import CENTERNET, STRIDE, Detections, decode_centernet, from_box_outputs
from flywheel.serving.preprocess import MEAN, STD
from flywheel.training.architectures import load_backbone

SSDLITE, SSDLITE_SIZE = "ssdlite320_mobilenet_v3_large", 320
TORCHVISION_DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", SSDLITE)
DETECTION_ARCHITECTURES = (CENTERNET, *TORCHVISION_DETECTORS)
SMALL_DETECTION_SIDE = 128


def _conv(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CenterNetSmall(nn.Module):
    """Six conv layers down to stride 4 (the last two dilated, so a cell sees about 60 px), then three small heads:
    a centre heatmap per class, the box's width and height, and the centre's offset within its cell (CenterNet,
    Zhou et al. 2019, "Objects as Points"). No anchors and no NMS in the graph: decoding is numpy's."""

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, width // 2, stride=2),
            _conv(width // 2, width // 2),
            _conv(width // 2, width, stride=2),
            _conv(width, width),
            _conv(width, width, dilation=2),
            _conv(width, width, dilation=4),
        )

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, out, 1))

        self.heatmap, self.size, self.offset = head(num_classes), head(2), head(2)
        last = self.heatmap[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, -2.19)  # a prior of 0.1 on every cell, as in CenterNet: a calm start

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heatmaps, sizes, offsets, and the image's embedding (its features' mean), which mining spreads over."""
        return self.heads(self.features(x))

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The outputs from the backbone's features: a fresh update refits these on features computed once."""
        # Sizes are learnt as logarithms (a box twice as big is one step away, whatever its size) and given as cells.
        size = torch.exp(self.size(features).clamp(max=8))
        return torch.sigmoid(self.heatmap(features)), size, self.offset(features), features.mean(dim=(2, 3))


def default_detection_architecture(width: int, height: int) -> str:
    """The small centre-point detector up to 128 px on the longer side, Faster R-CNN (MobileNetV3, 320) above."""
    return CENTERNET if max(width, height) <= SMALL_DETECTION_SIDE else TORCHVISION_DETECTORS[0]


def default_detection_input_size(architecture: str, side: int) -> int:
    """The median image's longer side rounded up to a multiple of 16 (at most 128) for the small detector; 320 for
    torchvision's, their design size."""
    if architecture == CENTERNET:
        return min(SMALL_DETECTION_SIDE, max(32, -(-side // 16) * 16))
    return 320


def build_detector(
    architecture: str, num_classes: int, *, input_size: int, pretrained_path: Path | None = None
) -> nn.Module:
    """A fresh detector for ``num_classes`` classes; with ``pretrained_path``, weights from that local file where
    their shapes fit (a torchvision detection or backbone state dict; class-specific layers stay new)."""
    if architecture == CENTERNET:
        model: nn.Module = CenterNetSmall(num_classes)
    elif architecture in TORCHVISION_DETECTORS:
        from torchvision.models import detection  # seconds of imports, paid only by projects that use it

        # Class 0 is torchvision's background. The input is already resized to a square: no resizing inside.
        options = {"min_size": input_size, "max_size": input_size, "image_mean": list(MEAN), "image_std": list(STD)}
        if architecture == SSDLITE:  # resizes to its fixed 320 px inside
            options = {"image_mean": list(MEAN), "image_std": list(STD)}
        model = getattr(detection, architecture)(
            weights=None, weights_backbone=None, num_classes=num_classes + 1, **options
        )
    else:
        raise ValueError(
            f"unknown detection architecture {architecture!r}; use one of {', '.join(DETECTION_ARCHITECTURES)}"
        )
    if pretrained_path is not None:
        load_backbone(model, pretrained_path)
    return model


def _gaussian_targets(
    boxes: list[np.ndarray], classes: list[np.ndarray], *, num_classes: int, cells: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet's targets for a batch: (N, K, H, W) heatmaps (a Gaussian per box, its spread a share of the box's
    size, TTFNet's elliptical variant), and per image the centre cells, sizes and offsets of its boxes."""
    heat = np.zeros((len(boxes), num_classes, cells, cells), dtype=np.float32)
    ys, xs = np.mgrid[0:cells, 0:cells].astype(np.float32)
    centres, sizes, offsets = [], [], []
    for n, (image_boxes, image_classes) in enumerate(zip(boxes, classes, strict=True)):
        for (x1, y1, x2, y2), k in zip(image_boxes / STRIDE, image_classes, strict=True):
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            ix, iy = min(int(cx), cells - 1), min(int(cy), cells - 1)
            sx, sy = max((x2 - x1) * 0.54 / 6, 0.3), max((y2 - y1) * 0.54 / 6, 0.3)
            blob = np.exp(-((xs - ix) ** 2) / (2 * sx**2) - ((ys - iy) ** 2) / (2 * sy**2))
            np.maximum(heat[n, k], blob, out=heat[n, k])
            heat[n, k, iy, ix] = 1.0
            centres.append((n, iy, ix))
            sizes.append((x2 - x1, y2 - y1))  # in cells
            offsets.append((cx - ix, cy - iy))
    centre_cells = np.array(centres, np.int64).reshape(-1, 3)  # an image with no boxes adds none
    return heat, centre_cells, np.array(sizes, np.float32).reshape(-1, 2), np.array(offsets, np.float32).reshape(-1, 2)


def focal_loss(predicted: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """CornerNet's penalty-reduced focal loss on centre heatmaps, each class's terms weighted (rare classes count
    as much as common ones), over the number of objects."""
    p = predicted.clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    terms = -positive * (1 - p) ** 2 * torch.log(p) - (1 - positive) * (1 - target) ** 4 * p**2 * torch.log(1 - p)
    per_class = terms.sum(dim=(0, 2, 3)) * class_weights
    return per_class.sum() / positive.sum().clamp(min=1)


def detection_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    boxes: list[np.ndarray],
    classes: list[np.ndarray],
    *,
    num_classes: int,
    class_weights: torch.Tensor,
) -> torch.Tensor:
    """The training loss of a batch: ``inputs`` (N, 3, S, S) normalized, per image (M, 4) corner boxes in input
    pixels and (M,) class indices from 0."""
    if isinstance(model, CenterNetSmall):
        return centernet_loss(model(inputs), boxes, classes, num_classes=num_classes, class_weights=class_weights)
    # torchvision normalizes inside; it takes the [0, 1] image
    images = list(_unnormalize(inputs))
    targets = [
        {
            "boxes": torch.from_numpy(b.astype(np.float32)).reshape(-1, 4).to(inputs.device),
            "labels": torch.from_numpy(c.astype(np.int64) + 1).to(inputs.device),
        }
        for b, c in zip(boxes, classes, strict=True)
    ]
    losses = model(images, targets)
    return sum(losses.values(), torch.zeros((), device=inputs.device))


def centernet_loss(
    outputs: tuple[torch.Tensor, ...],
    boxes: list[np.ndarray],
    classes: list[np.ndarray],
    *,
    num_classes: int,
    class_weights: torch.Tensor,
) -> torch.Tensor:
    """The centre-point detector's loss from its outputs (heatmaps, sizes, offsets; see ``detection_loss``)."""
    heat, size, offset = outputs[:3]
    target, centres, sizes, offsets = _gaussian_targets(boxes, classes, num_classes=num_classes, cells=heat.shape[2])
    loss = focal_loss(heat, torch.from_numpy(target).to(heat.device), class_weights)
    if len(centres):
        n, iy, ix = (torch.from_numpy(c).to(heat.device) for c in centres.T)
        wanted = torch.from_numpy(np.log(np.maximum(sizes, 0.25))).to(heat.device)
        loss = loss + F.l1_loss(torch.log(size[n, :, iy, ix]), wanted)
        loss = loss + F.l1_loss(offset[n, :, iy, ix], torch.from_numpy(offsets).to(heat.device))
    return loss


def _unnormalize(inputs: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=inputs.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=inputs.device).view(1, 3, 1, 1)
    return inputs * std + mean


@torch.no_grad()
def detect(model: nn.Module, inputs: torch.Tensor) -> list[Detections]:
    """Detections for a normalized batch (N, 3, S, S), in input pixels, through the decoding serving uses."""
    model.eval()
    if isinstance(model, CenterNetSmall):
        heat, size, offset, _ = model(inputs)
        return decode_centernet(heat.cpu().numpy(), size.cpu().numpy(), offset.cpu().numpy())
    return [
        from_box_outputs(out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(), out["labels"].cpu().numpy())
        for out in model(list(_unnormalize(inputs)))
    ]
