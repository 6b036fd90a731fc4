"""The training augmentation (albumentations), seeded so a training can be repeated exactly."""

from __future__ import annotations

import albumentations as A


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
