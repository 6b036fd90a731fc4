"""Turning snapshot items into arrays for training, and the dev split carved from train."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image as PILImage
from sklearn.model_selection import train_test_split

from flywheel.serving.preprocess import to_array
from storage.blobs import BlobStore

DEV_SHARE = 0.1


def load_arrays(
    blobs: BlobStore,
    sha256s: Sequence[str],
    *,
    size: int,
    on_progress: Callable[[int, int], None] | None = None,
    threads: int = 4,
) -> np.ndarray:
    """(N, size, size, 3) uint8 arrays of the blobs' images, through the shared preprocessing."""

    def load(sha: str) -> np.ndarray:
        with blobs.open(sha) as stream, PILImage.open(stream) as image:
            return to_array(image, size)

    out = np.empty((len(sha256s), size, size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(threads) as pool:
        for index, array in enumerate(pool.map(load, sha256s)):
            out[index] = array
            if on_progress and (index % 256 == 0 or index == len(sha256s) - 1):
                on_progress(index + 1, len(sha256s))
    return out


def dev_split(labels: np.ndarray, *, seed: int, min_dev: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions for fitting and for early stopping: stratified when every class has two examples. No dev
    split (everything fits) when it would hold fewer than ``min_dev`` images (see ``TrainConfig.min_dev_images``)."""
    positions = np.arange(len(labels))
    if len(labels) < 10 or round(len(labels) * DEV_SHARE) < min_dev:
        return positions, positions[:0]
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    dev_size = max(DEV_SHARE, len(np.unique(labels)) / len(labels)) if stratify is not None else DEV_SHARE
    fit, dev = train_test_split(positions, test_size=dev_size, stratify=stratify, random_state=seed)
    return np.sort(fit), np.sort(dev)
