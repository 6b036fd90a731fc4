"""Exports of the current labels as CSV, JSON or a Label Studio full export, streamed in batches.

An export never holds the whole project in memory and never holds one long transaction: images
with a current label are read by id in keyset batches, each batch (and its current annotations,
in one more query) in a short read-only session of its own, which on SQLite takes no write lock.
The batches are not one snapshot: labels submitted during an export may or may not be in it.
"""

from __future__ import annotations

import io
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from annotation.csv_cells import CsvWriter
from storage.db import Database
from storage.models import Annotation, AnnotationOrigin, Image, User

EXPORT_BATCH = 1000
# A streamed export runs in one of the server's worker threads and is CPU-bound; left alone it gives
# the GIL back only when forced (every 5 ms), so each request thread waiting for it would stall that
# long at every hand-off. Yielding every few items (~1-2 ms of work) keeps other requests quick.
YIELD_EVERY_ITEMS = 25
YIELD_EVERY_ROWS = 250

T = TypeVar("T")

CSV_COLUMNS = ("image_id", "sha256", "original_name", "split", "label", "tie", "label_count", "gold", "votes")


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"
    labelstudio = "labelstudio"


MEDIA_TYPES = {
    ExportFormat.csv: "text/csv; charset=utf-8",
    ExportFormat.json: "application/json",
    ExportFormat.labelstudio: "application/json",
}
EXTENSIONS = {ExportFormat.csv: "csv", ExportFormat.json: "json", ExportFormat.labelstudio: "json"}


@dataclass(frozen=True)
class ExportedAnnotation:
    id: int
    annotator_id: int
    annotator: str
    label: str | None  # None only in detection projects, which have no exports yet
    duration_ms: int | None
    origin: AnnotationOrigin
    created_at: datetime


@dataclass(frozen=True)
class LabeledImage:
    id: int
    sha256: str
    original_name: str
    split: str
    label: str
    tie: bool
    label_count: int
    gold_label: str | None
    annotations: list[ExportedAnnotation]

    @property
    def votes(self) -> int:
        """How many current annotations agree with the label (0 for a gold image nobody answered yet)."""
        return sum(a.label == self.label for a in self.annotations)


def _polite(items: Iterable[T], every: int) -> Iterator[T]:
    """The items, letting other threads have the interpreter after every ``every`` of them."""
    for n, item in enumerate(items, start=1):
        if n % every == 0:
            time.sleep(0)  # releases the GIL: a waiting request thread takes it at once
        yield item


def export_filename(project_id: int, fmt: ExportFormat) -> str:
    return f"project-{project_id}-labels.{EXTENSIONS[fmt]}"


def count_labeled(session: Session, *, project_id: int) -> int:
    query = select(func.count()).select_from(Image)
    return session.scalar(query.where(Image.project_id == project_id, Image.consensus_label.is_not(None))) or 0


def _read_batch(session: Session, *, project_id: int, after: int, limit: int) -> list[LabeledImage]:
    images = session.execute(
        select(
            Image.id,
            Image.sha256,
            Image.original_name,
            Image.split,
            Image.consensus_label,
            Image.consensus_tie,
            Image.label_count,
            Image.gold_label,
        )
        .where(Image.project_id == project_id, Image.consensus_label.is_not(None), Image.id > after)
        .order_by(Image.id)
        .limit(limit)
    ).all()
    if not images:
        return []
    by_image: dict[int, list[ExportedAnnotation]] = defaultdict(list)
    rows = session.execute(
        select(
            Annotation.image_id,
            Annotation.id,
            Annotation.annotator_id,
            User.name,
            Annotation.label,
            Annotation.duration_ms,
            Annotation.origin,
            Annotation.created_at,
        )
        .join(User, User.id == Annotation.annotator_id)
        .where(Annotation.image_id.in_([row.id for row in images]), Annotation.is_current)
        .order_by(Annotation.image_id, Annotation.id)
    )
    for image_id, annotation_id, annotator_id, name, label, duration_ms, origin, created_at in _polite(
        rows, YIELD_EVERY_ROWS
    ):
        by_image[image_id].append(
            ExportedAnnotation(annotation_id, annotator_id, name, label, duration_ms, origin, created_at)
        )
    return [
        LabeledImage(
            id=row.id,
            sha256=row.sha256,
            original_name=row.original_name,
            split=str(row.split),
            label=row.consensus_label,
            tie=row.consensus_tie,
            label_count=row.label_count,
            gold_label=row.gold_label,
            annotations=by_image.get(row.id, []),
        )
        for row in images
    ]


def labeled_batches(db: Database, *, project_id: int, batch_size: int = EXPORT_BATCH) -> Iterator[list[LabeledImage]]:
    """The project's labeled images by id, a batch at a time, each read in its own short session."""
    after = 0
    while True:
        with db.read_session() as session:
            batch = _read_batch(session, project_id=project_id, after=after, limit=batch_size)
        # The session is closed here, before the caller sees the batch: nothing stays open while it is sent.
        if not batch:
            return
        yield batch
        after = batch[-1].id


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def csv_row(image: LabeledImage) -> list[Any]:
    return [
        image.id,
        image.sha256,
        image.original_name,
        image.split,
        image.label,
        "true" if image.tie else "false",
        image.label_count,
        "true" if image.gold_label is not None else "false",
        image.votes,
    ]


def json_item(image: LabeledImage) -> dict[str, Any]:
    return {
        "image_id": image.id,
        "sha256": image.sha256,
        "original_name": image.original_name,
        "split": image.split,
        "label": image.label,
        "tie": image.tie,
        "label_count": image.label_count,
        "gold": image.gold_label is not None,
        "votes": image.votes,
        "annotations": [
            {
                "annotator": a.annotator,
                "annotator_id": a.annotator_id,
                "label": a.label,
                "created_at": _timestamp(a.created_at),
                "duration_ms": a.duration_ms,
                "origin": str(a.origin),
            }
            for a in image.annotations
        ],
    }


def labelstudio_task(image: LabeledImage, *, base_url: str = "") -> dict[str, Any]:
    """One task of a Label Studio full export: each current annotation as one Label Studio annotation.

    ``meta`` carries the content hash (and the gold answer, for gold images) so that an import can
    match the image by its bytes whatever the file is called.
    """
    meta: dict[str, Any] = {"sha256": image.sha256, "original_name": image.original_name}
    if image.gold_label is not None:
        meta["gold_label"] = image.gold_label
    return {
        "id": image.id,
        "data": {"image": f"{base_url.rstrip('/')}/api/v1/images/{image.id}/content"},
        "meta": meta,
        "annotations": [
            {
                "id": a.id,
                "completed_by": a.annotator_id,
                "was_cancelled": False,
                "ground_truth": False,
                "lead_time": a.duration_ms / 1000 if a.duration_ms is not None else None,
                "created_at": _timestamp(a.created_at),
                "result": [
                    {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [a.label]}}
                ],
            }
            for a in image.annotations
        ],
        "predictions": [],
    }


def _csv_chunks(batches: Iterable[list[LabeledImage]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = CsvWriter(buffer)
    writer.writerow(CSV_COLUMNS)
    for batch in batches:
        writer.writerows(csv_row(image) for image in _polite(batch, YIELD_EVERY_ITEMS))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _json_array_chunks(batches: Iterable[list[LabeledImage]], item: Callable[[LabeledImage], Any]) -> Iterator[str]:
    """A JSON array written a batch at a time: ``[``, the items separated by commas, ``]``."""
    opening = "["
    for batch in batches:
        yield opening + "\n" + ",\n".join(_dumps(item(image)) for image in _polite(batch, YIELD_EVERY_ITEMS))
        opening = ","
    yield "\n]\n" if opening == "," else "[]\n"


def export_chunks(
    db: Database,
    *,
    project_id: int,
    fmt: ExportFormat,
    base_url: str = "",
    batch_size: int = EXPORT_BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The export as UTF-8 chunks, one per batch of images; ``on_batch`` hears each batch's size.

    ``base_url`` prefixes the image URLs of a Label Studio export (empty: paths relative to the server).
    """

    def counted() -> Iterator[list[LabeledImage]]:
        for batch in labeled_batches(db, project_id=project_id, batch_size=batch_size):
            if on_batch:
                on_batch(len(batch))
            yield batch

    if fmt is ExportFormat.csv:
        chunks = _csv_chunks(counted())
    elif fmt is ExportFormat.json:
        chunks = _json_array_chunks(counted(), json_item)
    else:
        chunks = _json_array_chunks(counted(), lambda image: labelstudio_task(image, base_url=base_url))
    for chunk in chunks:
        if chunk:
            yield chunk.encode()
