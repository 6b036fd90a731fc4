"""The pre-label an annotator sees with a task: the answer of the model that serves now, else a stored prediction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ScalarSelect, bindparam, select
from sqlalchemy.orm import Session

from annotation.queue import PreLabel, Task, stored_prelabel
from flywheel.serving.detection import ScoredBox
from flywheel.serving.inference import Predictor, model_version
from storage.driver_sql import DriverStatement
from storage.models import ModelStatus, ModelVersion, Prediction


@dataclass(frozen=True)
class PreLabelSource:
    """Where a task's pre-label comes from, read in the transaction that leased it: a model, whose answer is worked
    out after the commit (inference holds no lock), or else the newest stored prediction, here already."""

    model: bool
    stored: PreLabel | None


def _newest(column: Any) -> ScalarSelect[Any]:
    newest = select(column).where(Prediction.image_id == bindparam("image_id"))
    return newest.order_by(Prediction.id.desc()).limit(1).scalar_subquery()


_SOURCE = DriverStatement(  # compiled once: every task served asks it
    select(
        select(ModelVersion.id)
        .where(ModelVersion.project_id == bindparam("project_id"), ModelVersion.status == ModelStatus.champion)
        .exists(),
        _newest(Prediction.label),
        _newest(Prediction.confidence),
        _newest(Prediction.model_version),
    )
)


def prelabel_source(session: Session, *, task: Task) -> PreLabelSource:
    """One statement: whether a champion serves the task's project, and the image's newest stored prediction."""
    params = {"project_id": task.image.project_id, "image_id": task.image.id}
    ((model, label, confidence, version),) = _SOURCE.rows(session.connection(), params)
    return PreLabelSource(bool(model), None if label is None else PreLabel(label, confidence, version))


def prelabel_for(session: Session, predictor: Predictor, *, task: Task) -> PreLabel | None:
    """The serving model's answer (the champion's newest refreshed head, else the champion) beats the newest
    stored prediction, which may come from an older model; None when neither exists."""
    live = predictor.prelabel(session, image=task.image)
    if live is None:
        return stored_prelabel(session, image_id=task.image.id)
    model, answer, fallback = live
    return PreLabel(answer.label, answer.confidence, model_version(model), fallback)


def prelabel_boxes_for(session: Session, predictor: Predictor, *, task: Task) -> tuple[str, list[ScoredBox]] | None:
    """A detection task's suggested boxes: the serving detector's (model version, boxes), None before the first."""
    live = predictor.prelabel_boxes(session, image=task.image)
    if live is None:
        return None
    model, boxes = live
    return model_version(model), boxes
