"""Training a detector on prepared arrays: the classification recipe (``TrainConfig``, seeds, threads, epochs that
repeat a small set, cosine schedule, AdamW) with box-aware augmentation and a detection loss.

Deterministic on CPU: the same arrays, boxes, config and seed give the same weights and metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch import nn

from flywheel.serving.detection import Detections
from flywheel.training.detectors import build_detector, detect, detection_loss
from flywheel.training.fit import TrainConfig, epoch_order, resolve_device, to_tensor


@dataclass(frozen=True)
class BoxTargets:
    """One image's boxes in pixels of the model's square input: (M, 4) x1, y1, x2, y2 and (M,) class indices."""

    boxes: np.ndarray
    classes: np.ndarray


@dataclass
class DetectorResult:
    model: nn.Module
    history: list[dict[str, float]]


def box_augmentation(config: TrainConfig, size: int, *, seed: int) -> A.Compose:
    """The classification augmentation's geometric and photometric changes, moving the boxes with the pixels
    (albumentations' ``BboxParams``); a box pushed mostly out of the frame is dropped."""
    transforms: list[A.BasicTransform] = [
        A.Affine(
            scale=(1 - config.scale, 1 + config.scale),
            translate_percent=(-config.translate, config.translate),
            rotate=(-config.rotate_degrees, config.rotate_degrees),
            p=0.7,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=config.brightness_contrast, contrast_limit=config.brightness_contrast, p=0.5
        ),
    ]
    if config.hflip if config.hflip is not None else size > 64:
        transforms.insert(0, A.HorizontalFlip(p=0.5))
    boxes = A.BboxParams(format="pascal_voc", label_fields=["classes"], min_visibility=0.4, clip=True)
    return A.Compose(transforms, bbox_params=boxes, seed=seed)


def box_class_weights(targets: list[BoxTargets], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights per class over the training boxes (mean 1 over the classes present)."""
    counts = np.bincount(np.concatenate([t.classes for t in targets] or [np.zeros(0, np.int64)]), minlength=num_classes)
    counts = counts.astype(np.float32)
    weights = np.where(counts > 0, counts.sum() / (max((counts > 0).sum(), 1) * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def augmented(
    augment: A.Compose | None, images: np.ndarray, targets: list[BoxTargets]
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The images changed by ``augment`` (as they are without it), and their boxes and classes moved with them."""
    if augment is None:
        return images, [t.boxes for t in targets], [t.classes for t in targets]
    arrays, boxes, classes = [], [], []
    for image, target in zip(images, targets, strict=True):
        out = augment(image=image, bboxes=target.boxes.reshape(-1, 4), classes=target.classes)
        arrays.append(out["image"])
        kept = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        sides_ok = (kept[:, 2] - kept[:, 0] >= 1) & (kept[:, 3] - kept[:, 1] >= 1)
        boxes.append(kept[sides_ok])
        classes.append(np.asarray(out["classes"], dtype=np.int64).reshape(-1)[sides_ok])
    return np.stack(arrays), boxes, classes


def train_detector(
    config: TrainConfig,
    *,
    images: np.ndarray,
    targets: list[BoxTargets],
    num_classes: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    pretrained_path: Path | None = None,
) -> DetectorResult:
    """Train for ``config.epochs`` epochs (each at least ``min_epoch_images`` images), the last epoch's weights kept
    (no dev split: mAP on a few dozen images is too noisy to pick an epoch by). Returns the model on the CPU."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config)
    model = build_detector(
        config.architecture, num_classes, input_size=images.shape[1], pretrained_path=pretrained_path
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(epoch_order(len(images), config.min_epoch_images, rng)) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=steps)
    weights = box_class_weights(targets, num_classes).to(device)
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        augment = box_augmentation(config, images.shape[1], seed=int(rng.integers(2**31))) if config.augment else None
        order = epoch_order(len(images), config.min_epoch_images, rng)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            arrays, boxes, classes = augmented(augment, images[batch], [targets[i] for i in batch])
            optimizer.zero_grad()
            loss = detection_loss(
                model, to_tensor(arrays).to(device), boxes, classes, num_classes=num_classes, class_weights=weights
            )
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            if scheduler.last_epoch + 1 < steps:
                scheduler.step()
            total += loss.item() * len(batch)
        record = {"epoch": epoch, "loss": total / max(len(order), 1)}
        history.append(record)
        if on_epoch:
            on_epoch(epoch, record)
    model.cpu().eval()
    return DetectorResult(model=model, history=history)


def predict_boxes(model: nn.Module, images: np.ndarray, *, batch_size: int = 64) -> list[Detections]:
    """Detections for prepared HxWx3 uint8 images, in input pixels."""
    out: list[Detections] = []
    for start in range(0, len(images), batch_size):
        out.extend(detect(model, to_tensor(images[start : start + batch_size])))
    return out
