"""ONNX export of a trained model, checked against PyTorch in onnxruntime before it is stored."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from flywheel.training.architectures import head_of, replace_head

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


def export_onnx(model: nn.Module, input_size: int) -> bytes:
    """The model as ONNX: input ``input`` is the shared preprocessing's NCHW float tensor (``normalize``),
    any batch size; outputs ``logits`` (softmax gives the probabilities) and ``embedding``."""
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
    return program.model_proto.SerializeToString()


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
