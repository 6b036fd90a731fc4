"""Immutable dataset snapshots: the exact (image, label, split) list a model was trained on, or in a
detection project (image, boxes, split), the image's consensus boxes frozen.

A snapshot's content is canonical JSON stored as a blob named by its sha256, so the hash proves
the content and the same labels always give the same snapshot.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.blobs import BlobStore
from storage.errors import NotFound
from storage.models import DatasetSnapshot, Image, Project, Split, TaskType


@dataclass(frozen=True)
class Item:
    image_id: int
    sha256: str
    label: str
    split: Split


@dataclass(frozen=True)
class BoxItem:
    image_id: int
    sha256: str
    boxes: list[dict[str, Any]]  # {label, x, y, w, h} in upright-image pixels; [] when the image shows no object
    split: Split


def build_snapshot(session: Session, blobs: BlobStore, *, project: Project) -> DatasetSnapshot:
    """Freeze the project's consensus-labeled images now (an existing identical snapshot is reused)."""
    answer: InstrumentedAttribute[Any]
    if project.task_type is TaskType.detection:
        # Weak consensus boxes that asked for another answer are not settled: left out until it comes, or until
        # review has asked all it may (then they are as settled as they get, and listed as weak for an admin).
        answer, settled = Image.consensus_boxes, ~(Image.consensus_tie & (Image.label_count < Image.labels_needed))
    else:
        answer, settled = Image.consensus_label, true()
    found = session.execute(
        select(Image.id, Image.sha256, answer, Image.split)
        .where(Image.project_id == project.id, answer.is_not(None), settled)
        .order_by(Image.id)
    ).all()
    rows = [(image_id, sha, value, Split(split)) for image_id, sha, value, split in found if value is not None]
    content = json.dumps(
        {"labels": project.labels, "items": [[i, sha, value, split.value] for i, sha, value, split in rows]},
        separators=(",", ":"),
    ).encode()
    digest = blobs.put_bytes(content)
    existing = _find(session, project.id, digest)
    if existing is not None:
        return existing
    if project.task_type is TaskType.detection:
        stats = _box_stats([BoxItem(*row) for row in rows], project.labels)
    else:
        stats = _stats([Item(*row) for row in rows], project.labels)
    snapshot = DatasetSnapshot(project_id=project.id, content_sha256=digest, item_count=len(rows), stats=stats)
    try:
        with session.begin_nested():
            session.add(snapshot)
    except IntegrityError:  # the same snapshot, made at the same moment by another job
        winner = _find(session, project.id, digest)
        assert winner is not None
        return winner
    return snapshot


def get_snapshot(session: Session, *, snapshot_id: int) -> DatasetSnapshot:
    snapshot = session.get(DatasetSnapshot, snapshot_id)
    if snapshot is None:
        raise NotFound(f"snapshot {snapshot_id} not found", code="snapshot_not_found")
    return snapshot


def list_snapshots(session: Session, *, project_id: int, limit: int = 100) -> list[DatasetSnapshot]:
    """The project's snapshots, newest first."""
    return list(
        session.scalars(
            select(DatasetSnapshot)
            .where(DatasetSnapshot.project_id == project_id)
            .order_by(DatasetSnapshot.id.desc())
            .limit(limit)
        )
    )


def load_items(blobs: BlobStore, snapshot: DatasetSnapshot) -> tuple[list[str], list[Item]]:
    """A classification snapshot's label order and items, read back from its blob."""
    content = json.loads(blobs.read_bytes(snapshot.content_sha256))
    return content["labels"], [Item(i, sha, label, Split(split)) for i, sha, label, split in content["items"]]


def load_box_items(blobs: BlobStore, snapshot: DatasetSnapshot) -> tuple[list[str], list[BoxItem]]:
    """A detection snapshot's classes and items, read back from its blob."""
    content = json.loads(blobs.read_bytes(snapshot.content_sha256))
    return content["labels"], [BoxItem(i, sha, boxes, Split(split)) for i, sha, boxes, split in content["items"]]


def _find(session: Session, project_id: int, digest: str) -> DatasetSnapshot | None:
    return session.scalars(
        select(DatasetSnapshot).where(
            DatasetSnapshot.project_id == project_id, DatasetSnapshot.content_sha256 == digest
        )
    ).first()


def _stats(items: list[Item], labels: list[str]) -> dict:
    """Counts per split and class, and each class's share in the test split (stratification check)."""
    counts = {split.value: Counter(i.label for i in items if i.split == split) for split in Split}
    test_share = {
        label: round(counts["test"][label] / total, 4)
        for label in labels
        if (total := counts["train"][label] + counts["test"][label])
    }
    return {
        "train": sum(counts["train"].values()),
        "test": sum(counts["test"].values()),
        "per_class": {split: dict(sorted(c.items())) for split, c in counts.items()},
        "test_share_per_class": test_share,
    }


def _box_stats(items: list[BoxItem], labels: list[str]) -> dict:
    """Images and boxes per split, boxes per split and class, and each class's share of boxes in the test split."""
    counts = {split.value: Counter(b["label"] for i in items if i.split == split for b in i.boxes) for split in Split}
    test_share = {
        label: round(counts["test"][label] / total, 4)
        for label in labels
        if (total := counts["train"][label] + counts["test"][label])
    }
    return {
        "train": sum(i.split is Split.train for i in items),
        "test": sum(i.split is Split.test for i in items),
        "boxes": {split: sum(c.values()) for split, c in counts.items()},
        "per_class": {split: dict(sorted(c.items())) for split, c in counts.items()},
        "test_share_per_class": test_share,
    }
