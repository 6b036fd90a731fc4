"""Model files: checkpoints as plain dicts of tensors and metadata (loaded with ``weights_only=True``).

A refreshed model is its parent's network with the head from its own .npz (flywheel/heads.py).
"""

from __future__ import annotations

import copy
import functools
import io
from typing import Any

import numpy as np
import torch
from torch import nn

from flywheel.serving.heads import read_head
from flywheel.training.architectures import build_model, head_of
from flywheel.training.detectors import DETECTION_ARCHITECTURES, build_detector
from flywheel.training.fit import to_tensor
from storage.blobs import BlobStore
from storage.models import ModelKind, ModelVersion

CHECKPOINT_FORMAT = "labelwheel-checkpoint-1"


def checkpoint_bytes(state: dict[str, torch.Tensor], *, model: ModelVersion) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "architecture": model.architecture,
            "labels": list(model.labels),
            "input_size": model.input_size,
            "state_dict": {key: value.detach().cpu() for key, value in state.items()},
        },
        buffer,
    )
    return buffer.getvalue()


def read_checkpoint(blobs: BlobStore, sha256: str) -> dict[str, Any]:
    checkpoint = torch.load(io.BytesIO(blobs.read_bytes(sha256)), map_location="cpu", weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"blob {sha256} is not a labelwheel checkpoint")
    return checkpoint


def head_arrays(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    head = head_of(model)
    return head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy()


@functools.lru_cache(maxsize=4)
def full_network(blobs: BlobStore, weights_sha256: str) -> nn.Module:
    """A full model's network from its checkpoint, kept in memory (share it read-only: eval mode, no grad)."""
    checkpoint = read_checkpoint(blobs, weights_sha256)
    if checkpoint["architecture"] in DETECTION_ARCHITECTURES:
        network = build_detector(
            checkpoint["architecture"], len(checkpoint["labels"]), input_size=checkpoint["input_size"]
        )
    else:
        network = build_model(checkpoint["architecture"], len(checkpoint["labels"]))
    network.load_state_dict(checkpoint["state_dict"])
    return network.eval()


def load_model(blobs: BlobStore, model: ModelVersion, parent: ModelVersion | None = None) -> nn.Module:
    """The network of a model version for inference on the CPU: a refreshed classifier is a copy of its parent's
    network with its own head."""
    if model.kind == ModelKind.full or model.head_sha256 is None:  # a detector's refresh keeps its whole network
        if model.weights_sha256 is None:
            raise ValueError(f"model {model.id} has no weights yet")
        return full_network(blobs, model.weights_sha256)
    if parent is None or parent.weights_sha256 is None or model.head_sha256 is None:
        raise ValueError(f"refreshed model {model.id} needs its head and its parent's backbone")
    network = copy.deepcopy(full_network(blobs, parent.weights_sha256))
    weight, bias = read_head(blobs, model.head_sha256)
    head_of(network).load_state_dict({"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)})
    return network.eval()


@torch.no_grad()
def embed_and_predict(model: nn.Module, arrays: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) embeddings (the head's input) and (N, K) probabilities in one pass over prepared images."""
    model.eval()
    captured: list[torch.Tensor] = []
    hook = head_of(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        probabilities = [
            torch.softmax(model(to_tensor(arrays[start : start + batch_size])), dim=1).numpy()
            for start in range(0, len(arrays), batch_size)
        ]
    finally:
        hook.remove()
    if not probabilities:
        return np.zeros((0, head_of(model).in_features), np.float32), np.zeros(
            (0, head_of(model).out_features), np.float32
        )
    return torch.cat(captured).numpy().astype(np.float32), np.concatenate(probabilities)
