"""The one preprocessing used for training, evaluation and prediction, and the training augmentation."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from PIL import Image, ImageOps

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_array(image: Image.Image, size: int) -> np.ndarray:
    """Upright RGB, resized to ``size`` x ``size``: an HxWx3 uint8 array."""
    upright = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(upright.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_tensor(arrays: np.ndarray) -> torch.Tensor:
    """A batch of HxWx3 uint8 arrays as a normalized NCHW float tensor."""
    scaled = (arrays.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))


def augmentation(
    size: int,
    *,
    seed: int,
    hflip: bool | None = None,
    rotate_degrees: float = 10.0,
    scale: float = 0.1,
    translate: float = 0.08,
    brightness_contrast: float = 0.15,
) -> A.Compose:
    """Mild geometric and photometric changes; by default small images get no flips (a mirrored digit is
    another glyph)."""
    transforms: list[A.BasicTransform] = [
        A.Affine(
            scale=(1 - scale, 1 + scale),
            translate_percent=(-translate, translate),
            rotate=(-rotate_degrees, rotate_degrees),
            p=0.7,
        ),
        A.RandomBrightnessContrast(brightness_limit=brightness_contrast, contrast_limit=brightness_contrast, p=0.5),
    ]
    if hflip if hflip is not None else size > 64:
        transforms.insert(0, A.HorizontalFlip(p=0.5))
    return A.Compose(transforms, seed=seed)
