"""ONNX export of a trained model, checked against PyTorch in onnxruntime before it is stored."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

ONNX_TOLERANCE = 1e-4


def export_onnx(model: nn.Module, input_size: int) -> bytes:
    """The model as ONNX: input ``input`` is the shared preprocessing's NCHW float tensor, any batch size;
    output ``logits`` (softmax gives the probabilities)."""
    model.eval()
    example = torch.zeros(1, 3, input_size, input_size)
    program = torch.onnx.export(
        model,
        (example,),
        None,
        input_names=["input"],
        output_names=["logits"],
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
