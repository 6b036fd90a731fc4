"""The ML-backend protocol's answers: ``/setup`` (the serving model's version), ``/predict`` (one result per task,
in order) and ``/versions``, as label-studio-ml-backend shapes them.

A prediction's ``score`` is the image's place in labelwheel's labeling queue, so Label Studio's "sort by prediction
score" (descending) serves first what labelwheel's mining wants labeled first; the class's probability is the
score of the result inside it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from annotation.imports import TaskRejected
from annotation.labelstudio_tasks import Target, target_from_config
from flywheel.labelstudio.images import Source, task_images
from flywheel.labelstudio.links import get_link
from flywheel.serving.inference import Predictor, model_version
from flywheel.serving.registry import list_models, serving_model
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import InvalidInput
from storage.ingest import Limits
from storage.models import Image, ModelKind, ModelVersion, Project, QueueTier, TaskType

NO_MODEL = "no-model"
_TIERS = len(QueueTier)


@dataclass(frozen=True)
class Backend:
    """What the protocol's answers need from the running service."""

    db: Database
    blobs: BlobStore
    limits: Limits
    predictor: Predictor


def priority_score(queue_tier: int | None, priority: float) -> float:
    """The queue's order, (tier, priority) descending, as one number in [0, 1): a labeled image (out of the queue)
    scores 0, a waiting one (1 + tier + p / (1 + p)) / (tiers + 1), so a higher tier always scores higher and,
    within a tier, a higher priority does (mined images have priorities above 1, unmined ones below)."""
    if queue_tier is None:
        return 0.0
    priority = max(priority, 0.0)
    return (1 + queue_tier + priority / (1 + priority)) / (_TIERS + 1)


@functools.lru_cache(maxsize=64)
def target_for(label_config: str, labels: tuple[str, ...], detection: bool) -> Target:
    """The Choices (or RectangleLabels) control and its Image in a label config; parsing is slow, configs repeat."""
    return target_from_config(label_config, labels, detection=detection)


def project_target(project: Project, label_config: Any) -> Target:
    """The target in the label config Label Studio sent; InvalidInput when it sent none or one labelwheel cannot
    map to the project."""
    if not isinstance(label_config, str) or not label_config.strip():
        raise InvalidInput(
            "label_config is missing: Label Studio sends the project's label config with /setup and /predict",
            code="invalid_config",
        )
    return target_for(label_config, tuple(project.labels), project.task_type is TaskType.detection)


def setup(backend: Backend, *, project_id: int, schema: Any) -> dict[str, str]:
    """The serving model's version; the schema is checked (once per distinct schema) when sent."""
    with backend.db.read_session() as session:
        project = session.get_one(Project, project_id)
        if schema is not None:
            project_target(project, schema)
        model = serving_model(session, project_id=project_id)
        return {"model_version": model_version(model) if model else NO_MODEL}


def versions(backend: Backend, *, project_id: int) -> dict[str, Any]:
    with backend.db.read_session() as session:
        models = list_models(session, project_id=project_id, kinds=(ModelKind.full, ModelKind.refresh))
        return {"versions": [model_version(model) for model in models]}


def _error(exc: TaskRejected, version: str) -> dict[str, Any]:
    return {"result": [], "score": 0.0, "model_version": version, "error": {"code": exc.code, "message": exc.message}}


def predict(
    backend: Backend, *, project_id: int, tasks: Sequence[dict[str, Any]], label_config: Any
) -> list[dict[str, Any]]:
    """One result per task, in order; none at all while the project has no model (Label Studio then stores no
    prediction, and asks again later). A task whose image cannot be had gets an empty result with its ``error``.
    Detection projects get no predictions until detection models exist."""
    with backend.db.read_session() as session:
        project = session.get_one(Project, project_id)
        link = get_link(session, project_id=project_id)
        source = Source(link.url, link.access_token)
        target = project_target(project, label_config)
        model = serving_model(session, project_id=project_id)
        if model is None or project.task_type is TaskType.detection:
            return []
        model_id, version = model.id, model_version(model)
    found = task_images(
        db=backend.db,
        blobs=backend.blobs,
        limits=backend.limits,
        project_id=project_id,
        source=source,
        tasks=tasks,
        target=target,
    )
    image_ids = [item for item in found if isinstance(item, int)]
    with backend.db.read_session() as session:
        model = session.get_one(ModelVersion, model_id)
        images = {image.id: image for image in session.scalars(select(Image).where(Image.id.in_(image_ids)))}
        ordered = [images[i] for i in dict.fromkeys(image_ids)]
        answers = dict(
            zip(
                (image.id for image in ordered),
                backend.predictor.predict_stored(session, model=model, images=ordered),
                strict=True,
            )
        )
    results = []
    for item in found:
        if isinstance(item, TaskRejected):
            results.append(_error(item, version))
            continue
        answer, image = answers[item], images[item]
        choice = {
            "from_name": target.from_name,
            "to_name": target.to_name,
            "type": "choices",
            "value": {"choices": [answer.label]},
            "score": answer.confidence,
        }
        score = priority_score(image.queue_tier, image.priority)
        results.append({"result": [choice], "score": score, "model_version": version})
    return results
