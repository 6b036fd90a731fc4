"""The pre-label an annotator sees with a task: the answer of the model that serves now, else a stored prediction."""

from __future__ import annotations

from sqlalchemy.orm import Session

from annotation.queue import PreLabel, Task, stored_prelabel
from flywheel.serving.detection import ScoredBox
from flywheel.serving.inference import Predictor, model_version


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
