"""ONNX export of a trained model, checked against PyTorch in onnxruntime before it is stored."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from flywheel.serving.inference import model_version
from flywheel.serving.preprocess import MEAN, PREPROCESSING, STD
from flywheel.training.architectures import head_of, replace_head
from storage.models import ModelVersion

ONNX_TOLERANCE = 1e-4


class LogitsAndEmbedding(nn.Module):
    """The network with a second output: the head's input, which caches, refreshes and mining use."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(model)
        replace_head(self.backbone, nn.Identity())
        self.head = head_of(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.backbone(x)
        return self.head(embedding), embedding


def onnx_metadata(model: ModelVersion) -> dict[str, str]:
    """What a program needs to use the ONNX file on its own, stored in the file (``metadata_props``)."""
    return {
        "labelwheel.model_version": model_version(model),
        "labelwheel.labels": json.dumps(model.labels, ensure_ascii=False),
        "labelwheel.input_size": str(model.input_size),
        "labelwheel.input_layout": "NCHW float32, RGB",
        "labelwheel.mean": json.dumps([round(float(v), 6) for v in MEAN]),
        "labelwheel.std": json.dumps([round(float(v), 6) for v in STD]),
        "labelwheel.preprocessing": PREPROCESSING,
        "labelwheel.outputs": "logits: one per label, in labelwheel.labels order (softmax gives probabilities); "
        "embedding: the head's input",
    }


def export_onnx(model: nn.Module, input_size: int, *, metadata: dict[str, str]) -> bytes:
    """The model as ONNX: input ``input`` is the shared preprocessing's NCHW float tensor (``normalize``),
    any batch size; outputs ``logits`` (softmax gives the probabilities) and ``embedding``; ``metadata`` goes
    into the file's ``metadata_props``."""
    model.eval()
    example = torch.zeros(1, 3, input_size, input_size)
    program = torch.onnx.export(
        LogitsAndEmbedding(model).eval(),
        (example,),
        None,
        input_names=["input"],
        output_names=["logits", "embedding"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        dynamo=True,
        verbose=False,
        report=False,
    )
    assert program is not None
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def max_difference(model: nn.Module, onnx_bytes: bytes, input_size: int, *, batch: int = 8, seed: int = 0) -> float:
    """Largest absolute difference between PyTorch's and onnxruntime's logits on random inputs."""
    inputs = torch.from_numpy(
        np.random.default_rng(seed).standard_normal((batch, 3, input_size, input_size)).astype(np.float32)
    )
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"input": inputs.numpy()})
    model.eval()
    with torch.no_grad():
        torch_logits = model(inputs).numpy()
    return float(np.abs(onnx_logits - torch_logits).max())
