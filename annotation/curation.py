"""What admins and engineers steer: gold questions, their scores, and images sent back for review."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from annotation.annotations import check_answer, gold_correct, project_image
from annotation.box_answers import DrawnBox
from annotation.consensus import refresh_consensus
from annotation.report_marks import mark_reports_outdated
from storage.models import Annotation, Image, Project, User


def set_gold(
    session: Session,
    *,
    project: Project,
    image_id: int,
    label: str | None = None,
    boxes: Sequence[DrawnBox] | None = None,
) -> Image:
    """Mark an image as a gold question with a known answer, a label or boxes by the project's kind (or unmark it,
    given neither).

    Gold images leave the normal queue; each annotator is served each of them once, at the
    project's ``gold_rate``, and their answers are scored. Answers given before marking are scored too.
    """
    image = project_image(session, project=project, image_id=image_id, lock=True)
    if label is None and boxes is None:
        image.gold_label = image.gold_boxes = None
    else:
        answer = check_answer(project, image, label=label, boxes=boxes)
        image.gold_label, image.gold_boxes = answer.label, answer.boxes
    for annotation in session.scalars(select(Annotation).where(Annotation.image_id == image.id)):
        annotation.gold_correct = gold_correct(image, label=annotation.label, boxes=annotation.boxes)
    refresh_consensus(session, project=project, image=image)
    mark_reports_outdated(session, project_id=project.id)
    session.flush()
    return image


@dataclass(frozen=True)
class GoldScore:
    annotator_id: int
    name: str
    answered: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else 0.0


def gold_scores(session: Session, *, project_id: int) -> list[GoldScore]:
    rows = session.execute(
        select(
            Annotation.annotator_id,
            User.name,
            func.count(),
            func.sum(case((Annotation.gold_correct.is_(True), 1), else_=0)),
        )
        .join(User, User.id == Annotation.annotator_id)
        .where(Annotation.project_id == project_id, Annotation.is_current, Annotation.gold_correct.is_not(None))
        .group_by(Annotation.annotator_id, User.name)
        .order_by(Annotation.annotator_id)
    )
    return [GoldScore(a, name, int(n), int(ok or 0)) for a, name, n, ok in rows]


def send_for_review(session: Session, *, project: Project, image_ids: list[int], reason: str) -> list[Image]:
    """Ask for one more independent label on each image, served before fresh images, with the reason shown."""
    images = [project_image(session, project=project, image_id=i, lock=True) for i in dict.fromkeys(image_ids)]
    for image in images:
        if image.is_gold:
            continue
        image.labels_needed = image.label_count + 1
        image.review_reason = reason
        refresh_consensus(session, project=project, image=image)
    session.flush()
    return images
