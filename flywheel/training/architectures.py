"""Model architectures: a small CNN for tiny images and torchvision backbones for larger ones.

Weights start random; pretrained weights come only from a local file (nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

ARCHITECTURES = ("small_cnn", "resnet18", "mobilenet_v3_small")
SMALL_IMAGE_SIDE = 64


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: enough for digits-sized images, fast on a CPU."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(3, width),
            nn.MaxPool2d(2),
            block(width, width * 2),
            nn.MaxPool2d(2),
            block(width * 2, width * 4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def default_architecture(width: int, height: int) -> str:
    """small_cnn for images up to 64 px on their longer side, mobilenet_v3_small (quick on CPUs) above."""
    return "small_cnn" if max(width, height) <= SMALL_IMAGE_SIDE else "mobilenet_v3_small"


def default_input_size(architecture: str) -> int:
    return 32 if architecture == "small_cnn" else 224


def build_model(architecture: str, num_classes: int, *, pretrained_path: Path | None = None) -> nn.Module:
    """A fresh model; with ``pretrained_path``, backbone weights from that local file (the head stays new)."""
    if architecture == "small_cnn":
        model: nn.Module = SmallCNN(num_classes)
    elif architecture == "resnet18":
        from torchvision import models  # seconds of imports, paid only by projects that use it

        model = models.resnet18(weights=None, num_classes=num_classes)
    elif architecture == "mobilenet_v3_small":
        from torchvision import models

        model = models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    else:
        raise ValueError(f"unknown architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}")
    if pretrained_path is not None:
        load_backbone(model, pretrained_path)
    return model


def load_backbone(model: nn.Module, path: Path) -> None:
    """Load a state dict saved with ``torch.save(model.state_dict())``, skipping tensors whose shape differs
    (the classification head of a model trained on other classes). Never unpickles objects."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path} holds no weights that fit this architecture")
    model.load_state_dict(usable, strict=False)


def _head_slot(model: nn.Module) -> tuple[nn.Module, str]:
    """The module that holds the final linear layer, and the layer's name in it."""
    if isinstance(model, SmallCNN):
        return model, "head"
    name = type(model).__name__
    if name == "ResNet":
        return model, "fc"
    if name == "MobileNetV3":
        classifier = model.get_submodule("classifier")
        return classifier, [child for child, _ in classifier.named_children()][-1]
    raise ValueError(f"no known head for {name}")


def head_of(model: nn.Module) -> nn.Linear:
    """The final linear layer: what a fast refresh refits, and whose input is the image's embedding."""
    holder, name = _head_slot(model)
    layer = holder.get_submodule(name)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"the head of {type(model).__name__} is a {type(layer).__name__}, not a linear layer")
    return layer


def replace_head(model: nn.Module, layer: nn.Module) -> None:
    holder, name = _head_slot(model)
    setattr(holder, name, layer)
