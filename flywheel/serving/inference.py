"""Predictions in the API process, with onnxruntime and numpy only (torch never loads here).

The serving model is the champion's newest refreshed head, else the champion. Both run the same
way: the backbone's ONNX file gives an image's embedding (or the embedding is already cached), and
the serving model's head turns it into probabilities. Images go through the same ``to_array`` and
``normalize`` as in training; an uploaded image over three times the input size is reduced as it is
decoded (``storage.imagecheck.decode_for_model``), so huge uploads cost one decoded image of memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import onnxruntime as ort
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.serving.heads import head_probabilities, read_head
from flywheel.serving.preprocess import normalize, to_array
from flywheel.serving.registry import serving_model
from storage.blobs import BlobStore
from storage.errors import Conflict
from storage.ingest import Limits, decode_uploads
from storage.models import Embedding, Image, ModelKind, ModelVersion

CACHED_SESSIONS = 4
BATCH = 64


@dataclass(frozen=True)
class Answer:
    label: str
    confidence: float
    probabilities: dict[str, float]


def model_version(model: ModelVersion) -> str:
    return f"model-{model.id}"


class Predictor:
    """Keeps a few onnxruntime sessions (one thread each, so predictions leave the API its CPU share)."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()

    def _session(self, onnx_sha256: str) -> ort.InferenceSession:
        with self._lock:
            if onnx_sha256 in self._sessions:
                self._sessions.move_to_end(onnx_sha256)
                return self._sessions[onnx_sha256]
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            self._blobs.read_bytes(onnx_sha256), sess_options=options, providers=["CPUExecutionProvider"]
        )
        with self._lock:
            self._sessions[onnx_sha256] = session
            while len(self._sessions) > CACHED_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def _parts(self, session: Session, model: ModelVersion) -> tuple[ModelVersion, tuple[np.ndarray, np.ndarray]]:
        """The model whose backbone computes embeddings, and the serving model's head."""
        backbone = session.get_one(ModelVersion, model.parent_id) if model.kind == ModelKind.refresh else model
        if backbone.onnx_sha256 is None or model.head_sha256 is None:
            raise Conflict(
                f"model {model.id} has no files to predict with yet; try again shortly", code="model_not_ready"
            )
        return backbone, read_head(self._blobs, model.head_sha256)

    def _embed(self, backbone: ModelVersion, arrays: np.ndarray) -> np.ndarray:
        assert backbone.onnx_sha256 is not None
        session = self._session(backbone.onnx_sha256)
        out = [
            session.run(["embedding"], {"input": normalize(arrays[start : start + BATCH])})[0]
            for start in range(0, len(arrays), BATCH)
        ]
        return np.concatenate(out)

    def predict(
        self, session: Session, *, project_id: int, uploads: Sequence[tuple[str, IO[bytes]]], limits: Limits
    ) -> tuple[ModelVersion, list[Answer]]:
        """Answers for uploaded images, with the model that gave them.

        The model is checked first (Conflict when the project has none, or its files are not made yet), then
        the files (``decode_uploads``); images are decoded one at a time, at the model's input size.
        """
        model = serving_model(session, project_id=project_id)
        if model is None:
            raise Conflict(
                f"project {project_id} has no model yet: once enough images are labeled a training starts by itself",
                code="no_model",
            )
        backbone, (weight, bias) = self._parts(session, model)
        images = decode_uploads(uploads, limits=limits, size=model.input_size)
        arrays = np.stack([to_array(image, model.input_size) for image in images])
        probabilities = head_probabilities(self._embed(backbone, arrays), weight, bias)
        return model, [_answer(row, model.labels) for row in probabilities]

    def predict_stored(self, session: Session, *, model: ModelVersion, images: Sequence[Image]) -> list[Answer]:
        """The model's answers for stored images, in order: cached embeddings where the backbone has them, the
        others decoded from the blob store and embedded in batches."""
        backbone, (weight, bias) = self._parts(session, model)
        ids = [image.id for image in images]
        cached = dict(
            session.execute(
                select(Embedding.image_id, Embedding.vector).where(
                    Embedding.model_id == backbone.id, Embedding.image_id.in_(ids)
                )
            ).all()
        )
        missing = [image for image in images if image.id not in cached]
        if missing:
            arrays = []
            for image in missing:
                with self._blobs.open(image.sha256) as stream, PILImage.open(stream) as decoded:
                    arrays.append(to_array(decoded, model.input_size))
            computed = self._embed(backbone, np.stack(arrays))
            fresh = {image.id: row for image, row in zip(missing, computed, strict=True)}
        else:
            fresh = {}
        embeddings = (
            np.stack([fresh[i] if i in fresh else np.frombuffer(cached[i], dtype=np.float32) for i in ids])
            if ids
            else np.zeros((0, weight.shape[1]), dtype=np.float32)
        )
        return [_answer(row, model.labels) for row in head_probabilities(embeddings, weight, bias)]

    def prelabel(self, session: Session, *, image: Image) -> tuple[ModelVersion, Answer] | None:
        """The serving model's answer for a stored image: from its cached embedding when there is one."""
        model = serving_model(session, project_id=image.project_id)
        if model is None:
            return None
        try:
            backbone, (weight, bias) = self._parts(session, model)
        except Conflict:  # a pre-label is a hint: without one the task is still served
            return None
        vector = session.scalar(
            select(Embedding.vector).where(Embedding.model_id == backbone.id, Embedding.image_id == image.id)
        )
        if vector is not None:
            embedding = np.frombuffer(vector, dtype=np.float32)[None, :]
        else:
            with self._blobs.open(image.sha256) as stream, PILImage.open(stream) as decoded:
                embedding = self._embed(backbone, to_array(decoded, model.input_size)[None])
        return model, _answer(head_probabilities(embedding, weight, bias)[0], model.labels)


def _answer(row: np.ndarray, labels: list[str]) -> Answer:
    best = int(row.argmax())
    return Answer(
        label=labels[best],
        confidence=float(row[best]),
        probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
    )
