"""The pre-label an annotator sees with a task: the answer of the model that serves now, else a stored prediction."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from annotation.queue import PreLabel, PreLabelSource, Task, source_columns, source_of, stored_prelabel
from flywheel.serving.detection import ScoredBox
from flywheel.serving.inference import Predictor, model_version
from storage.driver_sql import DriverStatement

_SOURCE = DriverStatement(  # compiled once: tasks not served from the open queue ask it
    select(*source_columns(bindparam("project_id"), bindparam("image_id")))
)


def prelabel_source(session: Session, *, task: Task) -> PreLabelSource:
    """Whether a champion serves the task's project, and the image's newest stored prediction: read with the lease
    when the task came from the open queue, else in one statement."""
    if task.prelabel_source is not None:
        return task.prelabel_source
    params = {"project_id": task.image.project_id, "image_id": task.image.id}
    (row,) = _SOURCE.rows(session.connection(), params)
    return source_of(row)


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
