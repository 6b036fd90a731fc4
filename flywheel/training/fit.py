"""Training a classifier on prepared arrays: a few plain functions and a frozen config.

Deterministic on CPU: the same arrays, config and seed give the same weights and metrics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from flywheel.serving.preprocess import normalize
from flywheel.training.architectures import build_model
from flywheel.training.augment import augmentation


@dataclass(frozen=True)
class TrainConfig:
    architecture: str = "small_cnn"
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 8  # epochs without a better dev accuracy before stopping early
    # Early stopping needs a dev split of at least this many images (10% of the training labels): judged on a
    # few dozen, the "best epoch" is a coin toss. Below that, every label trains for all epochs, and the
    # weights are averaged over the last ``average_epochs`` epochs (stochastic weight averaging), which
    # steadies a training on few labels far more than picking an epoch does.
    min_dev_images: int = 100
    average_epochs: int = 5  # 0: the last epoch's weights
    min_epoch_images: int = 1024  # a smaller training set repeats within an epoch, so it still gets enough steps
    threads: int = 1  # torch's share of the CPU, so the API stays responsive
    augment: bool = True
    hflip: bool | None = None  # None: by image size
    rotate_degrees: float = 10.0
    scale: float = 0.1
    translate: float = 0.08
    brightness_contrast: float = 0.15
    device: str = "auto"  # "auto": the GPU when there is one, else the CPU
    pretrained_weights: str | None = None  # a file name in LABELWHEEL_PRETRAINED_DIR; None: random init

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    dev_accuracy: float
    history: list[dict[str, float]]


def to_tensor(arrays: np.ndarray) -> torch.Tensor:
    """The shared preprocessing's ``normalize`` as a torch tensor."""
    return torch.from_numpy(normalize(arrays))


def resolve_device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights for the loss, so rare classes count as much as common ones."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def epoch_order(size: int, min_images: int, rng: np.random.Generator) -> np.ndarray:
    """Positions for one epoch: whole shuffled passes over ``size`` images until at least ``min_images``.

    A fixed number of epochs over 100 labels is a few dozen optimizer steps, far too few (the active-learning
    benchmark's early rounds were undertrained); repeating the set, each pass in a fresh order and with fresh
    augmentation, keeps the steps per epoch up while labels are few.
    """
    passes = max(1, -(-min_images // max(size, 1)))
    return np.concatenate([rng.permutation(size) for _ in range(passes)])


def train_one_epoch(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    rng: np.random.Generator,
) -> float:
    model.train()
    augment = (
        augmentation(
            images.shape[1],
            seed=int(rng.integers(2**31)),
            hflip=config.hflip,
            rotate_degrees=config.rotate_degrees,
            scale=config.scale,
            translate=config.translate,
            brightness_contrast=config.brightness_contrast,
        )
        if config.augment
        else None
    )
    device = next(model.parameters()).device
    order = epoch_order(len(images), config.min_epoch_images, rng)
    total = 0.0
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        arrays = images[batch]
        if augment is not None:
            arrays = np.stack([augment(image=a)["image"] for a in arrays])
        optimizer.zero_grad()
        targets = torch.from_numpy(labels[batch]).long().to(device)
        loss = loss_fn(model(to_tensor(arrays).to(device)), targets)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / max(len(order), 1)


@torch.no_grad()
def predict_proba(model: nn.Module, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """(N, K) class probabilities for N prepared HxWx3 uint8 images."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        torch.softmax(model(to_tensor(images[start : start + batch_size]).to(device)), dim=1).cpu().numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def train(
    config: TrainConfig,
    *,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    dev_images: np.ndarray,
    dev_labels: np.ndarray,
    num_classes: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    pretrained_path: Path | None = None,
) -> TrainResult:
    """Train with early stopping on dev accuracy; returns the best epoch's weights (on the CPU)."""
    if len(np.unique(train_labels)) < 2:
        raise ValueError("training needs labeled images of at least two classes")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(config.architecture, num_classes, pretrained_path=pretrained_path).to(resolve_device(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_labels, num_classes).to(resolve_device(config)))
    best_state, best_accuracy, best_epoch, history = copy.deepcopy(model.state_dict()), -1.0, 0, []
    averaged = AveragedModel(model, use_buffers=True) if config.average_epochs > 0 and not len(dev_labels) else None
    for epoch in range(1, config.epochs + 1):
        loss = train_one_epoch(
            model, train_images, train_labels, config=config, optimizer=optimizer, loss_fn=loss_fn, rng=rng
        )
        scheduler.step()
        dev_accuracy = (
            float((predict_proba(model, dev_images).argmax(1) == dev_labels).mean()) if len(dev_labels) else 0.0
        )
        record = {"epoch": epoch, "loss": loss, "dev_accuracy": dev_accuracy}
        history.append(record)
        if on_epoch:
            on_epoch(epoch, record)
        if averaged is not None and epoch > config.epochs - config.average_epochs:
            averaged.update_parameters(model)
        if dev_accuracy > best_accuracy or not len(dev_labels):  # with no dev split, the last epoch is kept
            best_state, best_accuracy, best_epoch = copy.deepcopy(model.state_dict()), dev_accuracy, epoch
        elif epoch - best_epoch >= config.patience:
            break
    if averaged is not None:
        best_state = averaged.module.state_dict()
    model.load_state_dict(best_state)
    model.cpu()
    return TrainResult(model=model, best_epoch=best_epoch, dev_accuracy=best_accuracy, history=history)
