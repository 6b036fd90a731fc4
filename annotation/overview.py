"""What a project's console shows at a glance: images by state, the class histogram, labels per day and per
annotator, and what the queue serves next.

The counts are read from ``project_counts``, which database triggers keep in the transaction of every change to
images and annotations (migration 0016), so a page reads the same few rows at 1,000 or 100,000 images
(bench/console.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Image, Project, QueueTier, User, utcnow
from storage.projects import project_counts

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
    states = {"total": 0, "unlabeled": 0, "overlap": 0, "review": 0, "done": 0}
    split = {"train": 0, "test": 0}
    for item, count in project_counts(session, project_id=project_id, figure="images").items():
        state, image_split = item.split(":")
        states["total"] += count
        states[state] += count
        split[image_split] += count
    return {**states, "split": split}


def class_histogram(session: Session, *, project: Project) -> list[dict[str, Any]]:
    """Per label of the project, in its order: current labels (boxes in a detection project) on train and test."""
    counts: dict[str, dict[str, Any]] = {label: {"label": label, "train": 0, "test": 0} for label in project.labels}
    for item, count in project_counts(session, project_id=project.id, figure="class").items():
        image_split, label = item.split(":", 1)
        if label in counts:
            counts[label][image_split] += count
    return list(counts.values())


def labels_per_day(session: Session, *, project_id: int, days: int = DAYS_SHOWN) -> list[dict[str, Any]]:
    """Answers submitted per UTC day over the last ``days`` days (corrections included), oldest first; days without
    any left out."""
    first = (utcnow() - timedelta(days=days - 1)).date().isoformat()
    counts = project_counts(session, project_id=project_id, figure="day", since=first)
    return [{"day": day, "labels": counts[day]} for day in sorted(counts)]


def labels_per_annotator(session: Session, *, project_id: int) -> list[dict[str, Any]]:
    """Each annotator's current answers in the project, most first."""
    counts = {
        int(item): count for item, count in project_counts(session, project_id=project_id, figure="annotator").items()
    }
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(counts))).all())
    ranked = sorted(
        (user_id for user_id in counts if user_id in names), key=lambda user_id: (-counts[user_id], user_id)
    )
    return [{"annotator_id": user_id, "name": names[user_id], "labels": counts[user_id]} for user_id in ranked]


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
