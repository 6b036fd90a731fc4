"""A model's final layer as plain arrays: embedding -> logits.

Stored as .npz next to each model, so the API process can apply a refreshed head to an embedding
with numpy alone.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from storage.blobs import BlobStore


def head_bytes(weight: np.ndarray, bias: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, weight=weight.astype(np.float32), bias=bias.astype(np.float32))
    return buffer.getvalue()


@functools.lru_cache(maxsize=64)
def read_head(blobs: BlobStore, sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, D) weight and (K,) bias; cached, as heads are small and immutable."""
    with np.load(io.BytesIO(blobs.read_bytes(sha256)), allow_pickle=False) as stored:
        return stored["weight"], stored["bias"]


def head_probabilities(embeddings: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(N, K) softmax of the head over (N, D) embeddings: a prediction without running the backbone."""
    logits = embeddings @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
