"""A detection project's current boxes as exports read them, and the two formats that keep every annotator's
answer: labelwheel's JSON and a Label Studio full export with ``rectanglelabels``.

An image is in an export once it has current boxes (``images.consensus_boxes``; a gold image's are its gold
boxes); ``[]`` is an image with no objects, which every format keeps as an image without boxes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation.export_batches import (
    EXPORT_BATCH,
    ExportedAnnotation,
    current_annotations,
    keyset_batches,
    lead_time,
    timestamp,
)
from storage.db import Database
from storage.models import Image, upright_size

# The names in the label config a detection export is meant for (README: Exports and Label Studio import).
LS_CONTROL = "label"
LS_IMAGE = "image"


@dataclass(frozen=True)
class BoxedImage:
    id: int
    sha256: str
    original_name: str
    split: str
    width: int  # upright: EXIF orientation applied, the frame the boxes are in
    height: int
    format: str
    boxes: list[dict[str, Any]]
    gold_boxes: list[dict[str, Any]] | None
    weak: bool  # the consensus boxes are weak (GET .../consensus/weak says why)
    label_count: int
    annotations: list[ExportedAnnotation]


def _read_batch(
    session: Session, after: int, limit: int, *, project_id: int, with_annotations: bool
) -> list[BoxedImage]:
    rows = session.execute(
        select(
            Image.id,
            Image.sha256,
            Image.original_name,
            Image.split,
            Image.width,
            Image.height,
            Image.exif_orientation,
            Image.format,
            Image.consensus_boxes,
            Image.gold_boxes,
            Image.consensus_tie,
            Image.label_count,
        )
        .where(Image.project_id == project_id, Image.consensus_boxes.is_not(None), Image.id > after)
        .order_by(Image.id)
        .limit(limit)
    ).all()
    by_image = current_annotations(session, image_ids=[row.id for row in rows]) if with_annotations and rows else {}
    return [
        BoxedImage(
            row.id,
            row.sha256,
            row.original_name,
            str(row.split),
            *upright_size(row.width, row.height, row.exif_orientation),
            format=row.format,
            boxes=row.consensus_boxes,
            gold_boxes=row.gold_boxes,
            weak=row.consensus_tie,
            label_count=row.label_count,
            annotations=by_image.get(row.id, []),
        )
        for row in rows
    ]


def boxed_batches(
    db: Database, *, project_id: int, batch_size: int = EXPORT_BATCH, with_annotations: bool = False
) -> Iterator[list[BoxedImage]]:
    """The images with current boxes by id, a batch at a time, each read in its own short session; with each
    annotator's current answer only when ``with_annotations`` (one more query per batch)."""
    return keyset_batches(
        db,
        lambda session, after, limit: _read_batch(
            session, after, limit, project_id=project_id, with_annotations=with_annotations
        ),
        batch_size=batch_size,
    )


def box_json_item(image: BoxedImage) -> dict[str, Any]:
    return {
        "image_id": image.id,
        "sha256": image.sha256,
        "original_name": image.original_name,
        "split": image.split,
        "width": image.width,
        "height": image.height,
        "boxes": image.boxes,
        "weak": image.weak,
        "label_count": image.label_count,
        "gold": image.gold_boxes is not None,
        "annotations": [
            {
                "annotator": a.annotator,
                "annotator_id": a.annotator_id,
                "boxes": a.boxes,
                "created_at": timestamp(a.created_at),
                "duration_ms": a.duration_ms,
                "origin": str(a.origin),
            }
            for a in image.annotations
        ],
    }


def rectangle_result(box: Mapping[str, Any], *, width: int, height: int, region_id: str) -> dict[str, Any]:
    """One box as a Label Studio ``rectanglelabels`` region: percent of the image, with the image's size."""
    return {
        "id": region_id,
        "from_name": LS_CONTROL,
        "to_name": LS_IMAGE,
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": box["x"] * 100 / width,
            "y": box["y"] * 100 / height,
            "width": box["w"] * 100 / width,
            "height": box["h"] * 100 / height,
            "rotation": 0,
            "rectanglelabels": [box["label"]],
        },
    }


def labelstudio_box_task(image: BoxedImage, *, base_url: str = "") -> dict[str, Any]:
    """One task of a Label Studio full export: each annotator's current boxes as one annotation (an image with
    no objects: an empty ``result``). ``meta`` carries the content hash and a gold image's gold boxes (pixels)."""
    meta: dict[str, Any] = {"sha256": image.sha256, "original_name": image.original_name}
    if image.gold_boxes is not None:
        meta["gold_boxes"] = image.gold_boxes
    return {
        "id": image.id,
        "data": {LS_IMAGE: f"{base_url.rstrip('/')}/api/v1/images/{image.id}/content"},
        "meta": meta,
        "annotations": [
            {
                "id": a.id,
                "completed_by": a.annotator_id,
                "was_cancelled": False,
                "ground_truth": False,
                "lead_time": lead_time(a.duration_ms),
                "created_at": timestamp(a.created_at),
                "result": [
                    rectangle_result(box, width=image.width, height=image.height, region_id=f"{a.id}-{n}")
                    for n, box in enumerate(a.boxes or [])
                ],
            }
            for a in image.annotations
        ],
        "predictions": [],
    }
