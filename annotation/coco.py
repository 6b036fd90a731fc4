"""The COCO object detection export of a detection project's current boxes, written as it is read.

``images``: ``id`` is labelwheel's image id, ``file_name`` the uploaded name, ``width``/``height`` the upright
size (EXIF orientation applied), which the boxes are in, and extra keys ``sha256`` and ``split``;
``categories``: the project's labels in order, ids from 1; ``annotations``: ``bbox`` [x, y, w, h] in pixels,
``area`` w*h, ``iscrowd`` 0, ids from 1. An image with no objects is listed without annotations. The images go
out a batch at a time while the annotations wait in a temporary file, which follows them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime

from annotation.box_exports import BoxedImage
from annotation.export_batches import YIELD_EVERY_ITEMS, dumps, polite

SPOOL_BYTES = 8 * 1024 * 1024  # annotations wait in memory up to this size, then on disk
COPY_CHUNK = 1024 * 1024


def coco_chunks(
    batches: Iterable[list[BoxedImage]],
    *,
    labels: Sequence[str],
    description: str = "current boxes exported by labelwheel",
) -> Iterator[str]:
    """The COCO document in pieces: the head, the images a batch at a time, then the spooled annotations."""
    category = {label: k for k, label in enumerate(labels, start=1)}
    head = {
        "info": {
            "description": description,
            "date_created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        },
        "licenses": [],
        "categories": [{"id": k, "name": label, "supercategory": ""} for label, k in category.items()],
    }
    yield dumps(head)[:-1] + ',"images":['
    separator, annotation_id = "\n", 0
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8") as spool:
        for batch in batches:
            images = []
            for image in polite(batch, YIELD_EVERY_ITEMS):
                images.append(
                    dumps(
                        {
                            "id": image.id,
                            "file_name": image.original_name,
                            "width": image.width,
                            "height": image.height,
                            "sha256": image.sha256,
                            "split": image.split,
                        }
                    )
                )
                for box in image.boxes:
                    annotation_id += 1
                    annotation = {
                        "id": annotation_id,
                        "image_id": image.id,
                        "category_id": category[box["label"]],
                        "bbox": [box["x"], box["y"], box["w"], box["h"]],
                        "area": box["w"] * box["h"],
                        "iscrowd": 0,
                    }
                    spool.write(("\n" if annotation_id == 1 else ",\n") + dumps(annotation))
            yield separator + ",\n".join(images)
            separator = ",\n"
        yield '\n],"annotations":['
        spool.seek(0)
        while piece := spool.read(COPY_CHUNK):
            yield piece
    yield "\n]}\n"
