"""Predictions in the API process: the serving model (the champion's newest refreshed head, else the
champion) applied with the one preprocessing used in training.

Torch is imported on first use and limited to one thread, so serving predictions leaves the API
its share of the CPU; training never happens here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.registry import serving_model
from storage.blobs import BlobStore
from storage.models import Embedding, Image, ModelKind, ModelVersion

if TYPE_CHECKING:
    from torch import nn

CACHED_MODELS = 4


@dataclass(frozen=True)
class Answer:
    label: str
    confidence: float
    probabilities: dict[str, float]


def model_version(model: ModelVersion) -> str:
    return f"model-{model.id}"


class Predictor:
    """Loads serving models once (a few at a time) and answers with them."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._networks: OrderedDict[int, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def network(self, session: Session, model: ModelVersion) -> nn.Module:
        with self._lock:
            if model.id in self._networks:
                self._networks.move_to_end(model.id)
                return self._networks[model.id]
        import torch

        from flywheel.artefacts import load_model

        torch.set_num_threads(1)
        parent = session.get(ModelVersion, model.parent_id) if model.kind == ModelKind.refresh else None
        network = load_model(self._blobs, model, parent)
        with self._lock:
            self._networks[model.id] = network
            while len(self._networks) > CACHED_MODELS:
                self._networks.popitem(last=False)
        return network

    def predict(
        self, session: Session, *, project_id: int, images: list[PILImage.Image]
    ) -> tuple[ModelVersion, list[Answer]] | None:
        """Answers for decoded images, with the model that gave them; None when the project has no model."""
        model = serving_model(session, project_id=project_id)
        if model is None:
            return None
        from flywheel.preprocess import to_array
        from flywheel.training import predict_proba

        arrays = np.stack([to_array(image, model.input_size) for image in images])
        probabilities = predict_proba(self.network(session, model), arrays)
        return model, [_answer(row, model.labels) for row in probabilities]

    def prelabel(self, session: Session, *, image: Image) -> tuple[ModelVersion, Answer] | None:
        """The serving model's answer for a stored image; from its cached embedding when there is one."""
        model = serving_model(session, project_id=image.project_id)
        if model is None:
            return None
        network = self.network(session, model)
        backbone_id = model.parent_id if model.kind == ModelKind.refresh else model.id
        vector = session.scalar(
            select(Embedding.vector).where(Embedding.model_id == backbone_id, Embedding.image_id == image.id)
        )
        from flywheel.architectures import head_of
        from flywheel.artefacts import head_probabilities
        from flywheel.preprocess import to_array
        from flywheel.training import predict_proba

        if vector is not None:
            head = head_of(network)
            embedding = np.frombuffer(vector, dtype=np.float32)[None, :]
            row = head_probabilities(embedding, {"weight": head.weight.detach(), "bias": head.bias.detach()})[0]
        else:
            with self._blobs.open(image.sha256) as stream, PILImage.open(stream) as decoded:
                array = to_array(decoded, model.input_size)
            row = predict_proba(network, array[None])[0]
        return model, _answer(row, model.labels)


def _answer(row: np.ndarray, labels: list[str]) -> Answer:
    best = int(row.argmax())
    return Answer(
        label=labels[best],
        confidence=float(row[best]),
        probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
    )
