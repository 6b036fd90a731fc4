"""Immutable dataset snapshots: the exact (image, label, split) list a model was trained on.

A snapshot's content is canonical JSON stored as a blob named by its sha256, so the hash proves
the content and the same labels always give the same snapshot.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.blobs import BlobStore
from storage.models import DatasetSnapshot, Image, Project, Split


@dataclass(frozen=True)
class Item:
    image_id: int
    sha256: str
    label: str
    split: Split


def build_snapshot(session: Session, blobs: BlobStore, *, project: Project) -> DatasetSnapshot:
    """Freeze the project's consensus-labeled images now (an existing identical snapshot is reused)."""
    rows = session.execute(
        select(Image.id, Image.sha256, Image.consensus_label, Image.split)
        .where(Image.project_id == project.id, Image.consensus_label.is_not(None))
        .order_by(Image.id)
    ).all()
    items = [Item(image_id, sha, label, Split(split)) for image_id, sha, label, split in rows if label is not None]
    content = json.dumps(
        {"labels": project.labels, "items": [[i.image_id, i.sha256, i.label, i.split.value] for i in items]},
        separators=(",", ":"),
    ).encode()
    digest = blobs.put_bytes(content)
    existing = _find(session, project.id, digest)
    if existing is not None:
        return existing
    snapshot = DatasetSnapshot(
        project_id=project.id, content_sha256=digest, item_count=len(items), stats=_stats(items, project.labels)
    )
    try:
        with session.begin_nested():
            session.add(snapshot)
    except IntegrityError:  # the same snapshot, made at the same moment by another job
        found = _find(session, project.id, digest)
        assert found is not None
        return found
    return snapshot


def load_items(blobs: BlobStore, snapshot: DatasetSnapshot) -> tuple[list[str], list[Item]]:
    """The snapshot's label order and items, read back from its blob."""
    content = json.loads(blobs.read_bytes(snapshot.content_sha256))
    return content["labels"], [Item(i, sha, label, Split(split)) for i, sha, label, split in content["items"]]


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
