"""Predictions in the API process, with onnxruntime and numpy only (torch never loads here).

The serving model is the champion's newest refreshed head, else the champion. Both run the same
way: the backbone's ONNX file gives an image's embedding (or the embedding is already cached), and
the serving model's head turns it into probabilities. Images go through the same ``to_array`` and
``normalize`` as in training; an uploaded image over three times the input size is reduced as it is
decoded (``storage.imagecheck.decode_for_model``), so huge uploads cost one decoded image of memory.

A model whose files are missing or broken does not stop predictions: the next of ``serving_candidates`` (the
champion, then the champions before it) answers, the answer says so (``fallback``), the failure is logged once and
``/health`` reports it until the serving model answers again. A broken model is tried again after
``retry_seconds`` (``LABELWHEEL_MODEL_RETRY_SECONDS``: its files may have been restored).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import onnxruntime as ort
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.serving.detection import ScoredBox, run_detector, scored_boxes
from flywheel.serving.heads import head_probabilities, read_head
from flywheel.serving.preprocess import normalize, to_array
from flywheel.serving.registry import serving_candidates
from storage.blobs import BlobStore
from storage.errors import Conflict, LabelwheelError, StorageUnavailable
from storage.ingest import Limits, decode_uploads
from storage.models import Embedding, Image, ModelKind, ModelVersion, upright_size

CACHED_SESSIONS = 4
BATCH = 64

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    label: str
    confidence: float
    probabilities: dict[str, float]


@dataclass(frozen=True)
class Served:
    """Answers, the model that gave them and the backbone whose embeddings (one row per answer) they rest on;
    ``fallback`` says why the serving model did not answer, when it did not."""

    model: ModelVersion
    backbone: ModelVersion
    answers: list[Answer]
    embeddings: np.ndarray
    fallback: str | None = None


class ModelUnavailable(StorageUnavailable):
    code = "model_unavailable"


def model_version(model: ModelVersion) -> str:
    return f"model-{model.id}"


class Predictor:
    """Keeps a few onnxruntime sessions (one thread each, so predictions leave the API its CPU share)."""

    def __init__(self, blobs: BlobStore, *, retry_seconds: float = 30.0) -> None:
        self._blobs = blobs
        self._retry_seconds = retry_seconds
        self._sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()
        self._broken: dict[int, tuple[str, float]] = {}  # model id: (why, when)
        self._falling_back: dict[int, str] = {}  # project id: why its serving model does not answer

    def falling_back(self) -> dict[int, str]:
        """Projects answered by a fallback model now, and why (``/health``)."""
        with self._lock:
            return dict(self._falling_back)

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

    def _ready(self, session: Session, model: ModelVersion) -> tuple[ModelVersion, tuple[np.ndarray, np.ndarray]]:
        """The model's backbone (its ONNX session loaded) and head; raises when either cannot be used."""
        self._not_broken(model)
        backbone, head = self._parts(session, model)
        assert backbone.onnx_sha256 is not None
        self._session(backbone.onnx_sha256)
        return backbone, head

    def _not_broken(self, model: ModelVersion) -> None:
        """Raises ``_Broken`` for a model that failed less than ``retry_seconds`` ago (its files not tried again)."""
        with self._lock:
            broken = self._broken.get(model.id)
        if broken is not None and time.monotonic() - broken[1] < self._retry_seconds:
            raise _Broken(broken[0])

    def _failed(self, project_id: int, model: ModelVersion, exc: Exception) -> str:
        why = str(exc) if isinstance(exc, LabelwheelError | _Broken) else f"{type(exc).__name__}: {exc}"
        note = f"model {model.id} cannot answer ({why})"
        if isinstance(exc, Conflict):  # files not made yet: nothing is broken, the next model answers meanwhile
            return note
        with self._lock:
            known = self._broken.get(model.id)
            self._broken[model.id] = (why, known[1] if isinstance(exc, _Broken) and known else time.monotonic())
        if not isinstance(exc, _Broken):
            log.error("project %s: %s; the next model in line answers", project_id, note)
        return note

    def _answered(self, project_id: int, model: ModelVersion, problems: list[str]) -> str | None:
        with self._lock:
            self._broken.pop(model.id, None)
            if problems:
                self._falling_back[project_id] = "; ".join(problems)
            else:
                self._falling_back.pop(project_id, None)
        return "; ".join(problems) or None

    def _candidates(self, session: Session, project_id: int) -> list[ModelVersion]:
        candidates = serving_candidates(session, project_id=project_id)
        if not candidates:
            raise Conflict(
                f"project {project_id} has no model yet: once enough images are labeled a training starts by itself",
                code="no_model",
            )
        return candidates

    def predict(
        self,
        session: Session,
        *,
        project_id: int,
        uploads: Sequence[tuple[str, IO[bytes]]],
        limits: Limits,
        first: ModelVersion | None = None,
    ) -> Served:
        """Answers for uploaded images, with the model that gave them: ``first`` (a canary) if given and able,
        else the first of ``serving_candidates`` able to.

        A model is checked first (Conflict when the project has none), then the files (``decode_uploads``: their
        errors are the caller's, whichever model answers); images are decoded one at a time, at the model's input
        size. A model that cannot load or run hands over to the next in line.
        """
        problems: list[str] = []
        not_ready: Conflict | None = None
        arrays: dict[int, np.ndarray] = {}  # by input size: a fallback model may take another
        line = self._candidates(session, project_id)
        if first is not None:
            line = [first, *(model for model in line if model.id != first.id)]
        for model in line:
            try:
                backbone, (weight, bias) = self._ready(session, model)
            except Exception as exc:  # missing or broken files: the next model answers
                note = self._failed(project_id, model, exc)
                if model is not first:  # a canary that cannot answer leaves the request to the serving line
                    problems.append(note)
                    not_ready = not_ready or (exc if isinstance(exc, Conflict) else None)
                continue
            if model.input_size not in arrays:
                arrays[model.input_size] = _arrays(uploads, limits, model.input_size)
            try:
                embeddings = self._embed(backbone, arrays[model.input_size])
                probabilities = head_probabilities(embeddings, weight, bias)
            except Exception as exc:  # a model that loads but fails to run
                note = self._failed(project_id, model, exc)
                if model is not first:
                    problems.append(note)
                continue
            answers = [_answer(row, model.labels) for row in probabilities]
            return Served(model, backbone, answers, embeddings, self._answered(project_id, model, problems))
        if not_ready is not None and len(problems) == 1:
            raise not_ready  # the only model's files are on their way: a 409 that says to try again shortly
        raise ModelUnavailable(
            f"no model of project {project_id} can answer: {'; '.join(problems)}; restore the files or promote "
            "another model"
        )

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

    def predict_with(
        self, session: Session, *, model: ModelVersion, uploads: Sequence[tuple[str, IO[bytes]]], limits: Limits
    ) -> Served:
        """``model``'s answers alone, without fallback: what a shadow model (or the champion beside a canary)
        would have said."""
        backbone, (weight, bias) = self._ready(session, model)
        embeddings = self._embed(backbone, _arrays(uploads, limits, model.input_size))
        answers = [_answer(row, model.labels) for row in head_probabilities(embeddings, weight, bias)]
        return Served(model, backbone, answers, embeddings)

    def _detector(self, model: ModelVersion) -> ort.InferenceSession:
        """The detector's loaded ONNX session; raises when its file cannot be used (as ``_ready``)."""
        self._not_broken(model)
        if model.onnx_sha256 is None:
            raise Conflict(f"model {model.id} has no ONNX file yet; try again shortly", code="model_not_ready")
        return self._session(model.onnx_sha256)

    def detect(
        self, session: Session, *, project_id: int, uploads: Sequence[tuple[str, IO[bytes]]], limits: Limits
    ) -> tuple[ModelVersion, list[list[ScoredBox]], str | None]:
        """A detection project's boxes for uploaded images (in pixels of each upright image), checked and decoded
        as ``predict`` does, with the detector that found them and why the ones before it in line could not (None
        when the serving detector answered)."""
        problems: list[str] = []
        not_ready: Conflict | None = None
        arrays: dict[int, np.ndarray] = {}
        for model in self._candidates(session, project_id):
            try:
                detector = self._detector(model)
            except Exception as exc:  # missing or broken file: the next detector answers
                problems.append(self._failed(project_id, model, exc))
                not_ready = not_ready or (exc if isinstance(exc, Conflict) else None)
                continue
            if model.input_size not in arrays:
                arrays[model.input_size] = _arrays(uploads, limits, model.input_size)  # every file checked first
            try:
                found = run_detector(detector, arrays[model.input_size])
            except Exception as exc:  # a detector that loads but fails to run
                problems.append(self._failed(project_id, model, exc))
                continue
            sizes = [upright_header_size(stream) for _, stream in uploads]
            boxes = [
                scored_boxes(d, labels=model.labels, width=w, height=h, input_size=model.input_size)
                for d, (w, h) in zip(found, sizes, strict=True)
            ]
            return model, boxes, self._answered(project_id, model, problems)
        if not_ready is not None and len(problems) == 1:
            raise not_ready
        raise ModelUnavailable(
            f"no detector of project {project_id} can answer: {'; '.join(problems)}; restore the files or promote "
            "another model"
        )

    def prelabel_boxes(self, session: Session, *, image: Image) -> tuple[ModelVersion, list[ScoredBox]] | None:
        """The boxes of the first detector in line that can give them for a stored image; None without any."""
        problems: list[str] = []
        for model in serving_candidates(session, project_id=image.project_id):
            try:
                detector = self._detector(model)
            except Exception as exc:  # a pre-label is a hint: the next detector gives it, or the task goes without
                problems.append(self._failed(image.project_id, model, exc))
                continue
            array = self._stored_array(image, model.input_size)
            if array is None:
                return None
            try:
                (found,) = run_detector(detector, array[None])
            except Exception as exc:  # a detector that loads but fails to run
                problems.append(self._failed(image.project_id, model, exc))
                continue
            self._answered(image.project_id, model, problems)
            width, height = image.upright_size
            boxes = scored_boxes(found, labels=model.labels, width=width, height=height, input_size=model.input_size)
            return model, boxes
        return None

    def prelabel(self, session: Session, *, image: Image) -> tuple[ModelVersion, Answer, str | None] | None:
        """The answer for a stored image of the first model in line that can give one (from the image's cached
        embedding when there is one), and why the models before it could not; None without any."""
        problems: list[str] = []
        for model in serving_candidates(session, project_id=image.project_id):
            try:
                backbone, (weight, bias) = self._ready(session, model)
            except Exception as exc:  # a pre-label is a hint: the next model gives it, or the task goes without
                problems.append(self._failed(image.project_id, model, exc))
                continue
            vector = session.scalar(
                select(Embedding.vector).where(Embedding.model_id == backbone.id, Embedding.image_id == image.id)
            )
            if vector is not None:
                inputs: np.ndarray | None = np.frombuffer(vector, dtype=np.float32)[None, :]  # the embedding itself
            elif (inputs := self._stored_array(image, model.input_size)) is None:
                return None
            assert inputs is not None
            try:
                embedding = inputs if vector is not None else self._embed(backbone, inputs[None])
                answer = _answer(head_probabilities(embedding, weight, bias)[0], model.labels)
            except Exception as exc:  # a model that loads but fails to run: the next one, or no pre-label
                problems.append(self._failed(image.project_id, model, exc))
                continue
            return model, answer, self._answered(image.project_id, model, problems)
        return None

    def _stored_array(self, image: Image, size: int) -> np.ndarray | None:
        """A stored image as a model's input; None (logged) when its file cannot be read: the image's fault, so no
        model is marked broken for it."""
        try:
            with self._blobs.open(image.sha256) as stream, PILImage.open(stream) as decoded:
                return to_array(decoded, size)
        except Exception:
            log.exception("project %s: image %s could not be read for a pre-label", image.project_id, image.id)
            return None


class _Broken(Exception):
    """A model that failed less than ``retry_seconds`` ago: skipped without trying its files again."""


def _arrays(uploads: Sequence[tuple[str, IO[bytes]]], limits: Limits, size: int) -> np.ndarray:
    for _, stream in uploads:
        stream.seek(0)
    return np.stack([to_array(image, size) for image in decode_uploads(uploads, limits=limits, size=size)])


def upright_header_size(fileobj: IO[bytes]) -> tuple[int, int]:
    """(width, height) of an already checked image file once its EXIF orientation is applied, from its header."""
    fileobj.seek(0)
    with PILImage.open(fileobj) as opened:
        orientation = opened.getexif().get(0x0112)
        width, height = opened.size
    fileobj.seek(0)
    return upright_size(width, height, orientation if isinstance(orientation, int) else None)


def _answer(row: np.ndarray, labels: list[str]) -> Answer:
    best = int(row.argmax())
    return Answer(
        label=labels[best],
        confidence=float(row[best]),
        probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
    )
