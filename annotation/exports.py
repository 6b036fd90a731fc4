"""Exports of the current labels, streamed: CSV, JSON or a Label Studio full export of a classification
project's labels; COCO, YOLO, Label Studio or JSON of a detection project's boxes (``annotation.box_exports``,
``annotation.coco``, ``annotation.yolo``). Images are read in keyset batches, each in a short read-only session
(``annotation.export_batches``), so an export of any size uses little memory and never holds up labelers.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from annotation.box_exports import BoxedImage, box_json_item, boxed_batches, labelstudio_box_task
from annotation.coco import coco_chunks
from annotation.csv_cells import CsvWriter
from annotation.export_batches import (
    EXPORT_BATCH,
    YIELD_EVERY_ITEMS,
    ExportedAnnotation,
    current_annotations,
    json_array_chunks,
    keyset_batches,
    polite,
    timestamp,
)
from annotation.yolo import yolo_chunks
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import InvalidInput
from storage.models import Image, Project, TaskType

CSV_COLUMNS = ("image_id", "sha256", "original_name", "split", "label", "tie", "label_count", "gold", "votes")


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"
    labelstudio = "labelstudio"
    coco = "coco"
    yolo = "yolo"


MEDIA_TYPES = {
    ExportFormat.csv: "text/csv; charset=utf-8",
    ExportFormat.json: "application/json",
    ExportFormat.labelstudio: "application/json",
    ExportFormat.coco: "application/json",
    ExportFormat.yolo: "application/zip",
}
EXTENSIONS = {
    ExportFormat.csv: "csv",
    ExportFormat.json: "json",
    ExportFormat.labelstudio: "json",
    ExportFormat.coco: "coco.json",
    ExportFormat.yolo: "yolo.zip",
}
CLASSIFICATION_FORMATS = (ExportFormat.csv, ExportFormat.json, ExportFormat.labelstudio)
DETECTION_FORMATS = (ExportFormat.coco, ExportFormat.yolo, ExportFormat.labelstudio, ExportFormat.json)


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


def check_export_format(project: Project, fmt: ExportFormat, *, images: bool = False) -> None:
    """InvalidInput when the format does not fit the project's kind (naming the ones that do), or when image files
    are asked for in a format other than YOLO's zip."""
    if project.task_type is TaskType.detection and fmt not in DETECTION_FORMATS:
        raise InvalidInput(
            f"the {fmt} export holds one label per image; project {project.id} is a detection project: export its "
            "boxes as coco, yolo, labelstudio or json",
            code="not_for_detection",
        )
    if project.task_type is TaskType.classification and fmt not in CLASSIFICATION_FORMATS:
        raise InvalidInput(
            f"the {fmt} export holds boxes; project {project.id} is a classification project: export its labels as "
            "csv, json or labelstudio",
            code="not_for_classification",
        )
    if images and fmt is not ExportFormat.yolo:
        raise InvalidInput(
            f"only the yolo zip can carry the image files; the {fmt} export holds labels only",
            code="images_not_in_format",
        )


def export_filename(project_id: int, fmt: ExportFormat) -> str:
    return f"project-{project_id}-labels.{EXTENSIONS[fmt]}"


def count_labeled(session: Session, *, project: Project) -> int:
    """Images with a current label (boxes, in a detection project): those an export holds."""
    current = Image.consensus_boxes if project.task_type is TaskType.detection else Image.consensus_label
    query = select(func.count()).select_from(Image)
    return session.scalar(query.where(Image.project_id == project.id, current.is_not(None))) or 0


def _read_batch(session: Session, after: int, limit: int, *, project_id: int) -> list[LabeledImage]:
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
    by_image = current_annotations(session, image_ids=[row.id for row in images])
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
    """A classification project's labeled images by id, a batch at a time, each read in its own short session."""
    return keyset_batches(
        db,
        lambda session, after, limit: _read_batch(session, after, limit, project_id=project_id),
        batch_size=batch_size,
    )


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
                "created_at": timestamp(a.created_at),
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
                "created_at": timestamp(a.created_at),
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
        writer.writerows(csv_row(image) for image in polite(batch, YIELD_EVERY_ITEMS))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _counted(batches: Iterator[list[Any]], on_batch: Callable[[int], None] | None) -> Iterator[list[Any]]:
    for batch in batches:
        if on_batch:
            on_batch(len(batch))
        yield batch


def export_chunks(
    db: Database,
    *,
    project_id: int,
    fmt: ExportFormat,
    base_url: str = "",
    image_files: BlobStore | None = None,
    batch_size: int = EXPORT_BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The export as chunks, about one per batch of images; ``on_batch`` hears each batch's size.

    ``base_url`` prefixes the image URLs of a Label Studio export (empty: paths relative to the server);
    ``image_files`` puts each image's file, read from that store, in a YOLO zip. Callers check the format with
    ``check_export_format`` first: here a wrong one is only found once the stream has started.
    """
    with db.read_session() as session:
        project = session.get_one(Project, project_id)
        check_export_format(project, fmt, images=image_files is not None)
        detection, labels = project.task_type is TaskType.detection, list(project.labels)
    chunks: Iterator[str]
    if detection:
        with_annotations = fmt in (ExportFormat.json, ExportFormat.labelstudio)
        boxed = _counted(
            boxed_batches(db, project_id=project_id, batch_size=batch_size, with_annotations=with_annotations),
            on_batch,
        )
        if fmt is ExportFormat.yolo:
            yield from yolo_chunks(boxed, labels=labels, image_files=image_files)
            return
        if fmt is ExportFormat.coco:
            chunks = coco_chunks(boxed, labels=labels)
        elif fmt is ExportFormat.json:
            chunks = json_array_chunks(boxed, box_json_item)
        else:

            def task(image: BoxedImage) -> dict[str, Any]:
                return labelstudio_box_task(image, base_url=base_url)

            chunks = json_array_chunks(boxed, task)
    else:
        labeled = _counted(labeled_batches(db, project_id=project_id, batch_size=batch_size), on_batch)
        if fmt is ExportFormat.csv:
            chunks = _csv_chunks(labeled)
        elif fmt is ExportFormat.json:
            chunks = json_array_chunks(labeled, json_item)
        else:
            chunks = json_array_chunks(labeled, lambda image: labelstudio_task(image, base_url=base_url))
    for chunk in chunks:
        if chunk:
            yield chunk.encode()
