"""The one preprocessing used for training, evaluation and prediction.

Only numpy and Pillow at import time: the API process predicts with onnxruntime and never loads torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PREPROCESSING = (
    "EXIF orientation applied, converted to RGB, resized to input_size x input_size with PIL's bilinear filter on "
    "the uint8 image, then /255, minus mean, over std (per channel)"
)


def to_array(image: Image.Image, size: int) -> np.ndarray:
    """Upright RGB, resized to ``size`` x ``size``: an HxWx3 uint8 array."""
    upright = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(upright.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def normalize(arrays: np.ndarray) -> np.ndarray:
    """A batch of HxWx3 uint8 arrays as the models' input: normalized NCHW float32."""
    scaled = (arrays.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))
