"""A dataset snapshot as a download: its images and labels in one zip, streamed, laid out for training code.

``imagefolder``: ``train/<label>/<image id>.<ext>`` and ``test/<label>/...`` by the snapshot's fixed split, the
layout torchvision's ``ImageFolder`` and Hugging Face's ``imagefolder`` read; ``csv``: ``images/<image id>.<ext>``.
Both begin with ``snapshot.json`` (the snapshot, its label order and the format) and ``labels.csv`` (``file_name,
image_id,sha256,split,label``), so whoever reads the stream knows each image's sha256 before its bytes arrive.
Images follow in image id order, stored as they are (they are compressed already); ``after`` leaves out those up to
an id, which is how an interrupted download resumes without fetching again what it has.
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

from annotation.csv_cells import CsvWriter
from flywheel.training.snapshots import load_items
from storage.blobs import BlobStore
from storage.errors import InvalidInput
from storage.models import DatasetSnapshot, Image, Project, TaskType

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}
CSV_COLUMNS = ("file_name", "image_id", "sha256", "split", "label")
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


@dataclass(frozen=True)
class ArchiveEntry:
    name: str
    image_id: int
    sha256: str


@dataclass(frozen=True)
class ArchivePlan:
    """Everything the archive holds, decided before its first byte is sent (a refusal is then still a 4xx)."""

    filename: str
    header: list[tuple[str, bytes]]  # snapshot.json, labels.csv
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
    fmt: ArchiveFormat,
    after: int | None = None,
) -> ArchivePlan:
    project = session.get_one(Project, snapshot.project_id)
    if project.task_type is TaskType.detection:
        raise InvalidInput(
            f"snapshot {snapshot.id} is of a detection project: its archive formats (COCO, YOLO) are not available "
            f"yet; the archive formats that exist ({', '.join(ArchiveFormat)}) hold one label per image",
            code="not_for_detection",
        )
    labels, items = load_items(blobs, snapshot)
    extensions = _extensions(session, [item.image_id for item in items])
    rows, images = [], []
    for item in items:
        extension = extensions[item.image_id]
        if fmt is ArchiveFormat.imagefolder:
            name = f"{item.split.value}/{folder_name(item.label)}/{item.image_id}.{extension}"
        else:
            name = f"images/{item.image_id}.{extension}"
        rows.append((name, item.image_id, item.sha256, item.split.value, item.label))
        if after is None or item.image_id > after:
            images.append(ArchiveEntry(name, item.image_id, item.sha256))
    about = {
        "id": snapshot.id,
        "project_id": snapshot.project_id,
        "content_sha256": snapshot.content_sha256,
        "item_count": snapshot.item_count,
        "labels": labels,
        "format": fmt.value,
        "created_at": snapshot.created_at.isoformat(),
        "stats": snapshot.stats,
    }
    created = snapshot.created_at
    return ArchivePlan(
        filename=f"labelwheel-project{snapshot.project_id}-snapshot{snapshot.id}-{fmt.value}.zip",
        header=[("snapshot.json", _json(about)), ("labels.csv", _csv(rows))],
        images=images,
        modified=(max(created.year, 1980), created.month, created.day, created.hour, created.minute, created.second),
    )


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


def _extensions(session: Session, image_ids: list[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for start in range(0, len(image_ids), FORMAT_BATCH):
        batch = image_ids[start : start + FORMAT_BATCH]
        rows = session.execute(select(Image.id, Image.format).where(Image.id.in_(batch)))
        found.update({image_id: EXTENSIONS.get(fmt, "bin") for image_id, fmt in rows})
    return found


def _info(name: str, modified: tuple[int, int, int, int, int, int]) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=modified)
    info.external_attr = 0o644 << 16  # read-write for the owner once unzipped, as a file written by hand
    return info


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=2).encode()


def _csv(rows: list[tuple[Any, ...]]) -> bytes:
    text = io.StringIO()
    writer = CsvWriter(text)
    writer.writerow(CSV_COLUMNS)
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
