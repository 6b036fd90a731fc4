"""The project's current labels as index arrays: what consensus, agreement and scorecards compute on.

One query reads every current label; everything after it is numpy. Excluded annotators stay in the
arrays (their scorecards still need them) but are marked, and ``usable`` leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Annotation, AnnotatorExclusion, Image, Project
from storage.projects import require_classification


@dataclass(frozen=True)
class Crowd:
    labels: list[str]  # (K,) the project's label set, in order
    image_ids: np.ndarray  # (N,) images with a current label or a gold answer, by id
    annotator_ids: np.ndarray  # (W,) annotators with a current label, by id
    excluded: np.ndarray  # (W,) bool: left out of consensus by an admin
    item: np.ndarray  # (M,) index into image_ids, one entry per current label
    worker: np.ndarray  # (M,) index into annotator_ids
    label: np.ndarray  # (M,) index into labels
    gold: np.ndarray  # (N,) class index of the gold answer, -1 where none

    @property
    def n_items(self) -> int:
        return len(self.image_ids)

    @property
    def n_workers(self) -> int:
        return len(self.annotator_ids)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @cached_property
    def usable(self) -> np.ndarray:
        """(M,) bool: labels that count toward consensus."""
        return ~self.excluded[self.worker]

    @cached_property
    def votes(self) -> np.ndarray:
        """(N, K) number of usable labels of each class per item."""
        counts = np.zeros((self.n_items, self.n_classes), dtype=np.int64)
        np.add.at(counts, (self.item[self.usable], self.label[self.usable]), 1)
        return counts

    @cached_property
    def overlapped(self) -> np.ndarray:
        """(N,) bool: items with usable labels from at least two annotators."""
        return self.votes.sum(axis=1) >= 2

    def ratings(self) -> np.ndarray:
        """(N, W) class index each annotator gave each item, -1 where none (excluded annotators left out)."""
        matrix = np.full((self.n_items, self.n_workers), -1, dtype=np.int64)
        keep = self.usable
        matrix[self.item[keep], self.worker[keep]] = self.label[keep]
        return matrix[:, ~self.excluded]


def excluded_annotators(session: Session, *, project_id: int) -> set[int]:
    return set(
        session.scalars(
            select(AnnotatorExclusion.annotator_id).where(
                AnnotatorExclusion.project_id == project_id, AnnotatorExclusion.revoked_at.is_(None)
            )
        )
    )


def load_crowd(session: Session, *, project: Project) -> Crowd:
    """Every current label of the project, and its gold answers."""
    require_classification(project, feature="label statistics (consensus, agreement, scorecards)")
    rows = session.execute(
        select(Annotation.image_id, Annotation.annotator_id, Annotation.label)
        .where(Annotation.project_id == project.id, Annotation.is_current)
        .order_by(Annotation.id)
    ).all()
    gold_rows = [
        (image_id, label)
        for image_id, label in session.execute(
            select(Image.id, Image.gold_label).where(Image.project_id == project.id, Image.gold_label.is_not(None))
        )
        if label is not None
    ]
    class_of = {label: k for k, label in enumerate(project.labels)}
    image_ids = np.unique(np.array([r[0] for r in rows] + [r[0] for r in gold_rows], dtype=np.int64))
    annotator_ids = np.unique(np.array([r[1] for r in rows], dtype=np.int64))
    gold = np.full(len(image_ids), -1, dtype=np.int64)
    if gold_rows:
        gold[np.searchsorted(image_ids, [r[0] for r in gold_rows])] = [class_of[r[1]] for r in gold_rows]
    excluded = excluded_annotators(session, project_id=project.id)
    return Crowd(
        labels=list(project.labels),
        image_ids=image_ids,
        annotator_ids=annotator_ids,
        excluded=np.isin(annotator_ids, sorted(excluded)),
        item=np.searchsorted(image_ids, np.array([r[0] for r in rows], dtype=np.int64)),
        worker=np.searchsorted(annotator_ids, np.array([r[1] for r in rows], dtype=np.int64)),
        label=np.array([class_of[str(r[2])] for r in rows], dtype=np.int64),  # labels: a classification project
        gold=gold,
    )
