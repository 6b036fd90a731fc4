"""What a project's console shows at a glance: images by state, the class histogram, labels per day and per
annotator, and what the queue serves next.

Each figure is one grouped query over the project's rows, so a page costs the same few statements at 1,000 or
100,000 images (bench/console.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from storage.models import Annotation, Image, Project, QueueTier, TaskType, User, utcnow

DAYS_SHOWN = 30
# Why an image in each tier waits, as the queue serves tiers: overlap first, then review, then fresh images.
TIER_REASONS = {
    QueueTier.overlap: "needs more independent labels (overlap)",
    QueueTier.review: "sent back for review",
    QueueTier.fresh: "not labeled yet",
}


@dataclass(frozen=True)
class QueuedImage:
    image: Image
    tier: QueueTier
    why: str


def image_states(session: Session, *, project_id: int) -> dict[str, Any]:
    """Images by queue state and split: ``unlabeled`` (no label yet), ``overlap`` and ``review`` (labeled, waiting for
    more), ``done``, and ``split`` counts."""
    # Grouped by the raw columns, in the order of ix_images_states, so the index alone answers.
    rows = session.execute(
        select(Image.queue_tier, Image.split, Image.label_count, func.count())
        .where(Image.project_id == project_id)
        .group_by(Image.queue_tier, Image.split, Image.label_count)
    ).all()
    states = {"total": 0, "unlabeled": 0, "overlap": 0, "review": 0, "done": 0}
    split = {"train": 0, "test": 0}
    for tier, image_split, label_count, count in rows:
        states["total"] += count
        split[image_split.value] += count
        if tier is None:
            states["done"] += count
        elif tier == QueueTier.review:
            states["review"] += count
        elif label_count:
            states["overlap"] += count
        else:
            states["unlabeled"] += count
    return {**states, "split": split}


def class_histogram(session: Session, *, project: Project) -> list[dict[str, Any]]:
    """Per label of the project, in its order: current labels (boxes in a detection project) on train and test."""
    counts: dict[str, dict[str, Any]] = {label: {"label": label, "train": 0, "test": 0} for label in project.labels}
    if project.task_type == TaskType.detection:
        boxes = session.execute(
            select(Image.split, Image.consensus_boxes).where(
                Image.project_id == project.id, Image.consensus_boxes.is_not(None)
            )
        )
        for image_split, answer in boxes:
            for box in answer or ():
                if box["label"] in counts:
                    counts[box["label"]][image_split.value] += 1
    else:
        rows = session.execute(
            select(Image.consensus_label, Image.split, func.count())
            .where(Image.project_id == project.id, Image.consensus_label.is_not(None))
            .group_by(Image.consensus_label, Image.split)
        )
        for label, image_split, count in rows:
            if label in counts:
                counts[label][image_split.value] += count
    return list(counts.values())


def labels_per_day(session: Session, *, project_id: int, days: int = DAYS_SHOWN) -> list[dict[str, Any]]:
    """Answers submitted per UTC day over the last ``days`` days (corrections included), oldest first; days without
    any left out."""
    # One range count per day on ix_annotations_created: no dialect's date function, no sort of every answer.
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    counts = []
    for back in range(days - 1, -1, -1):
        start = today - timedelta(days=back)
        count = session.scalar(
            select(func.count()).where(
                Annotation.project_id == project_id,
                Annotation.created_at >= start,
                Annotation.created_at < start + timedelta(days=1),
            )
        )
        if count:
            counts.append({"day": start.date().isoformat(), "labels": count})
    return counts


def labels_per_annotator(session: Session, *, project_id: int) -> list[dict[str, Any]]:
    """Each annotator's current answers in the project, most first."""
    per_annotator = (
        select(Annotation.annotator_id, func.count().label("labels"))
        .where(Annotation.project_id == project_id, Annotation.is_current == true())
        .group_by(Annotation.annotator_id)
        .subquery()
    )
    rows = session.execute(
        select(User.id, User.name, per_annotator.c.labels)
        .join(per_annotator, per_annotator.c.annotator_id == User.id)
        .order_by(per_annotator.c.labels.desc(), User.id)
    )
    return [{"annotator_id": user_id, "name": name, "labels": labels} for user_id, name, labels in rows]


def queue_preview(session: Session, *, project: Project, limit: int) -> list[QueuedImage]:
    """The images the queue serves first, in its order (tier, then priority: the mining score), each with why.

    An annotator is served the first of these they have not been served before (gold questions aside)."""
    images = session.scalars(
        select(Image)
        .where(Image.project_id == project.id, Image.queue_tier.is_not(None))
        .order_by(Image.queue_tier.desc(), Image.priority.desc(), Image.id.desc())
        .limit(limit)
    )
    preview = []
    for image in images:
        tier = QueueTier(image.queue_tier or 0)
        why = TIER_REASONS[tier]
        if tier == QueueTier.review and image.review_reason:
            why = image.review_reason
        elif tier == QueueTier.overlap:
            why = f"{why}: {image.label_count} of {image.labels_needed} labels"
        preview.append(QueuedImage(image=image, tier=tier, why=why))
    return preview
