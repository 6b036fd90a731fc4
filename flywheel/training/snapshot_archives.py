"""A dataset snapshot as a download: its images and labels in one zip, streamed, laid out for training code.

Classification: ``imagefolder``: ``train/<label>/<image id>.<ext>`` and ``test/<label>/...`` by the snapshot's fixed
split, the layout torchvision's ``ImageFolder`` and Hugging Face's ``imagefolder`` read; ``csv``:
``images/<image id>.<ext>``. Detection: ``coco``: ``train/<image id>.<ext>`` and ``test/...`` with
``annotations/train.json`` and ``annotations/test.json`` (what pycocotools and torchvision's ``CocoDetection``
read); ``yolo``: ``images/<split>/<image id>.<ext>`` with ``labels/<split>/<image id>.txt`` and ``data.yaml`` (the
Ultralytics layout). Boxes are in pixels of the upright image (EXIF orientation applied), as they were drawn.

Every archive begins with ``snapshot.json`` (the snapshot, its label order, the format and the annotation files
that follow) and ``labels.csv`` (``file_name,image_id,sha256,split`` and the label, or the number of boxes), so
whoever reads the stream knows each image's sha256 before its bytes arrive; then the annotation files of the
detection formats. Images follow in image id order, stored as they are (they are compressed already); ``after``
leaves out those up to an id, which is how an interrupted download resumes without fetching again what it has.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation.box_exports import BoxedImage
from annotation.coco import coco_chunks
from annotation.csv_cells import CsvWriter
from annotation.yolo import data_yaml, yolo_lines
from flywheel.training.snapshots import load_box_items, load_items
from storage.blobs import BlobStore
from storage.errors import InvalidInput
from storage.models import DatasetSnapshot, Image, Project, TaskType, upright_size

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}
CSV_COLUMNS = ("file_name", "image_id", "sha256", "split")  # then "label", or "boxes" (how many) for detection
FORMAT_BATCH = 1000
# Hand the stream a chunk this large, or after this many images: each chunk is one hop between the server's
# threads, and small ones let other requests in between.
CHUNK_BYTES = 1 << 20
CHUNK_ITEMS = 64
# Characters a file system may refuse in a folder name (Windows' list, and %, which encodes them).
_UNSAFE = '%/\\:*?"<>|'


class ArchiveFormat(StrEnum):
    imagefolder = "imagefolder"
    csv = "csv"
    coco = "coco"
    yolo = "yolo"


FORMATS = {
    TaskType.classification: (ArchiveFormat.imagefolder, ArchiveFormat.csv),
    TaskType.detection: (ArchiveFormat.coco, ArchiveFormat.yolo),
}  # the first of each is the default


@dataclass(frozen=True)
class ArchiveEntry:
    name: str
    image_id: int
    sha256: str


@dataclass(frozen=True)
class _Picture:
    """What the archive needs of an image row: its file extension and upright size."""

    extension: str
    width: int
    height: int


@dataclass(frozen=True)
class ArchivePlan:
    """Everything the archive holds, decided before its first byte is sent (a refusal is then still a 4xx)."""

    filename: str
    header: list[tuple[str, bytes]]  # snapshot.json, labels.csv, then a detection format's annotation files
    images: list[ArchiveEntry]  # those after ``after``, by image id
    modified: tuple[int, int, int, int, int, int]


def folder_name(label: str) -> str:
    """A label as one path component: characters file systems refuse are %-encoded (``labels.csv`` keeps the
    label as it is)."""
    name = "".join(quote(c, safe="") if c in _UNSAFE else c for c in label)
    return name.replace(".", "%2E") if name in {".", ".."} else name


def plan_archive(
    session: Session,
    blobs: BlobStore,
    *,
    snapshot: DatasetSnapshot,
    fmt: ArchiveFormat | None = None,
    after: int | None = None,
) -> ArchivePlan:
    """The archive of ``snapshot`` in ``fmt`` (by default the first format of the project's task type)."""
    project = session.get_one(Project, snapshot.project_id)
    fits = FORMATS[project.task_type]
    fmt = fmt or fits[0]
    if fmt not in fits:
        raise InvalidInput(
            f"snapshot {snapshot.id} is of a {project.task_type.value} project: its archive formats are "
            f"{' and '.join(fits)}, not {fmt.value}",
            code="format_not_for_project",
        )
    files = _detection_files if project.task_type is TaskType.detection else _classification_files
    labels, rows, annotation_files = files(session, blobs, snapshot, fmt)
    about = {
        "id": snapshot.id,
        "project_id": snapshot.project_id,
        "task_type": project.task_type.value,
        "content_sha256": snapshot.content_sha256,
        "item_count": snapshot.item_count,
        "labels": labels,
        "format": fmt.value,
        "annotation_files": [name for name, _ in annotation_files],
        "created_at": snapshot.created_at.isoformat(),
        "stats": snapshot.stats,
    }
    if project.task_type is TaskType.detection:
        about["boxes"] = "x, y, w, h in pixels of the upright image: apply the EXIF orientation before using them"
    columns = (*CSV_COLUMNS, "boxes" if project.task_type is TaskType.detection else "label")
    created = snapshot.created_at
    return ArchivePlan(
        filename=f"labelwheel-project{snapshot.project_id}-snapshot{snapshot.id}-{fmt.value}.zip",
        header=[("snapshot.json", _json(about)), ("labels.csv", _csv(columns, rows)), *annotation_files],
        images=[ArchiveEntry(row[0], row[1], row[2]) for row in rows if after is None or row[1] > after],
        modified=(max(created.year, 1980), created.month, created.day, created.hour, created.minute, created.second),
    )


def _classification_files(
    session: Session, blobs: BlobStore, snapshot: DatasetSnapshot, fmt: ArchiveFormat
) -> tuple[list[str], list[tuple[Any, ...]], list[tuple[str, bytes]]]:
    """The manifest rows of a classification snapshot: its label is in each image's path or in labels.csv."""
    labels, items = load_items(blobs, snapshot)
    pictures = _pictures(session, [item.image_id for item in items])
    rows = []
    for item in items:
        extension = pictures[item.image_id].extension
        if fmt is ArchiveFormat.imagefolder:
            name = f"{item.split.value}/{folder_name(item.label)}/{item.image_id}.{extension}"
        else:
            name = f"images/{item.image_id}.{extension}"
        rows.append((name, item.image_id, item.sha256, item.split.value, item.label))
    return labels, rows, []


def _detection_files(
    session: Session, blobs: BlobStore, snapshot: DatasetSnapshot, fmt: ArchiveFormat
) -> tuple[list[str], list[tuple[Any, ...]], list[tuple[str, bytes]]]:
    """The manifest rows and the annotation files of a detection snapshot, written by the same code as the
    project's COCO and YOLO exports."""
    labels, items = load_box_items(blobs, snapshot)
    pictures = _pictures(session, [item.image_id for item in items])
    rows: list[tuple[Any, ...]] = []
    files: list[tuple[str, bytes]] = []
    by_split: dict[str, list[BoxedImage]] = {"train": [], "test": []}
    for item in items:
        picture, split = pictures[item.image_id], item.split.value
        stem = f"{item.image_id}.{picture.extension}"
        name = f"{split}/{stem}" if fmt is ArchiveFormat.coco else f"images/{split}/{stem}"
        rows.append((name, item.image_id, item.sha256, split, len(item.boxes)))
        boxed = BoxedImage(
            item.image_id,
            item.sha256,
            stem,  # COCO's file_name: relative to the split's folder
            split,
            picture.width,
            picture.height,
            format=picture.extension,
            boxes=item.boxes,
            gold_boxes=None,
            weak=False,
            label_count=0,
            annotations=[],
        )
        by_split[split].append(boxed)
        if fmt is ArchiveFormat.yolo:
            files.append((f"labels/{split}/{item.image_id}.txt", yolo_lines(boxed, labels).encode()))
    if fmt is ArchiveFormat.coco:
        for split, images in by_split.items():
            about = f"snapshot {snapshot.id}, {split} split, exported by labelwheel"
            document = "".join(coco_chunks([images], labels=labels, description=about))
            files.append((f"annotations/{split}.json", document.encode()))
    else:
        files.append(("data.yaml", data_yaml(labels, train="images/train", val="images/test").encode()))
    return labels, rows, files


def archive_chunks(blobs: BlobStore, plan: ArchivePlan) -> Iterator[bytes]:
    """The zip, in chunks of about ``CHUNK_BYTES``; a blob missing from the store ends the stream early, so the
    download is seen to be incomplete (the zip has no end)."""
    spool = _Spool()
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, data in plan.header:
            archive.writestr(_info(name, plan.modified), data)
        yield spool.take()  # the manifest first: a reader knows at once what is coming
        for count, entry in enumerate(plan.images, start=1):
            try:
                data = blobs.read_bytes(entry.sha256)
            except Exception:
                yield spool.take()  # the images before it are whole: a resumed download starts after them
                raise
            archive.writestr(_info(entry.name, plan.modified), data)
            if spool.pending >= CHUNK_BYTES or count % CHUNK_ITEMS == 0:
                yield spool.take()
    yield spool.take()


def _pictures(session: Session, image_ids: list[int]) -> dict[int, _Picture]:
    found: dict[int, _Picture] = {}
    for start in range(0, len(image_ids), FORMAT_BATCH):
        batch = image_ids[start : start + FORMAT_BATCH]
        rows = session.execute(
            select(Image.id, Image.format, Image.width, Image.height, Image.exif_orientation).where(Image.id.in_(batch))
        )
        for image_id, fmt, width, height, orientation in rows:
            found[image_id] = _Picture(EXTENSIONS.get(fmt, "bin"), *upright_size(width, height, orientation))
    return found


def _info(name: str, modified: tuple[int, int, int, int, int, int]) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=modified)
    info.external_attr = 0o644 << 16  # read-write for the owner once unzipped, as a file written by hand
    return info


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=2).encode()


def _csv(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> bytes:
    text = io.StringIO()
    writer = CsvWriter(text)
    writer.writerow(columns)
    writer.writerows(rows)
    return text.getvalue().encode()


class _Spool(io.RawIOBase):
    """Where ``ZipFile`` writes: it may seek back into the entry it is writing to fill in the entry's size and CRC
    (so every local header carries them, and the zip can be read as it streams); ``take`` hands over what is
    written so far, after which nothing before it changes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # the stream offset of _buffer[0]
        self._position = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._position + offset}.get(
            whence, self._start + len(self._buffer) + offset
        )
        if target < self._start:
            raise io.UnsupportedOperation("cannot seek back into bytes already sent")
        self._position = target
        return target

    def write(self, data: Any) -> int:  # ZipFile writes bytes
        at = self._position - self._start
        size = len(data)
        self._buffer[at : at + size] = data
        self._position += size
        return size

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._start += len(data)
        self._buffer.clear()
        return data
