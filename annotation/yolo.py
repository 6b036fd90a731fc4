"""The YOLO export of a detection project: a zip streamed as it is written, in the layout Ultralytics reads.

``labels/<sha256>.txt``: one file per image with current boxes, a line ``class cx cy w h`` per box (the class
index in the project's label order; centre and size divided by the upright image's width and height), empty
for an image with no objects. ``train.txt`` and ``val.txt`` list ``./images/<sha256>.<ext>`` for the project's
train and test splits, and ``data.yaml`` names them with ``nc`` and ``names``. The image files themselves go in
``images/`` only when asked for: otherwise put them there (named by their sha256) before training.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO

from annotation.box_exports import BoxedImage
from annotation.export_batches import YIELD_EVERY_ITEMS, dumps, polite
from storage.blobs import BlobStore
from storage.errors import NotFound

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}
SPOOL_BYTES = 4 * 1024 * 1024  # a split's list of files is kept in memory up to this size, then on disk
COPY_CHUNK = 1024 * 1024


class _Sink:
    """A write-only stream that keeps what the zip writer wrote until it is drained (a zip needs no seeking
    when written this way: each entry's sizes follow its data)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def yolo_lines(image: BoxedImage, labels: Sequence[str]) -> str:
    """The image's label file: ``class cx cy w h`` per box, normalised to the upright size."""
    index = {label: k for k, label in enumerate(labels)}
    return "".join(
        f"{index[b['label']]} {(b['x'] + b['w'] / 2) / image.width:.6f} {(b['y'] + b['h'] / 2) / image.height:.6f} "
        f"{b['w'] / image.width:.6f} {b['h'] / image.height:.6f}\n"
        for b in image.boxes
    )


def data_yaml(labels: Sequence[str], *, train: str = "train.txt", val: str = "val.txt") -> str:
    """Ultralytics' dataset file; ``train`` and ``val`` are lists of image files or folders of images, relative to
    it. ``val`` is labelwheel's test split."""
    # JSON strings are YAML scalars: any label, quotes and colons included, reads back as itself.
    return (
        "# YOLO labels exported by labelwheel; each image's labels/.../<name>.txt sits where Ultralytics looks for\n"
        "# it; val is labelwheel's test split. Boxes are in the upright image (EXIF orientation applied).\n"
        f"train: {train}\nval: {val}\nnc: {len(labels)}\nnames: {dumps(list(labels))}\n"
    )


def _entry(name: str, *, compress: bool = True) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=datetime.now(UTC).timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _copy(archive: zipfile.ZipFile, name: str, source: IO[str], sink: _Sink) -> Iterator[bytes]:
    source.seek(0)
    with archive.open(_entry(name), "w") as entry:
        while text := source.read(COPY_CHUNK):
            entry.write(text.encode())
            yield sink.drain()


def yolo_chunks(
    batches: Iterable[list[BoxedImage]], *, labels: Sequence[str], image_files: BlobStore | None = None
) -> Iterator[bytes]:
    """The zip, about a batch of images at a time (and a chunk at a time through each image file, when
    ``image_files`` is given). An image whose file is missing from the store is listed in ``missing.txt``."""
    sink = _Sink()
    missing: list[str] = []
    with (
        tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8") as train,
        tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8") as val,
        zipfile.ZipFile(sink, "w") as archive,
    ):
        for batch in batches:
            for image in polite(batch, YIELD_EVERY_ITEMS):
                stem = image.sha256
                picture = f"images/{stem}.{EXTENSIONS.get(image.format, image.format.lower())}"
                archive.writestr(_entry(f"labels/{stem}.txt"), yolo_lines(image, labels))
                (val if image.split == "test" else train).write(f"./{picture}\n")
                if image_files is None:
                    continue
                try:
                    chunks = image_files.iter_chunks(image.sha256)
                except NotFound:
                    missing.append(f"{image.id}\t{image.sha256}\t{image.original_name}")
                    continue
                with archive.open(_entry(picture, compress=False), "w") as entry:
                    for chunk in chunks:
                        entry.write(chunk)
                        yield sink.drain()
            yield sink.drain()
        yield from _copy(archive, "train.txt", train, sink)
        yield from _copy(archive, "val.txt", val, sink)
        archive.writestr(_entry("data.yaml"), data_yaml(labels))
        if missing:
            archive.writestr(_entry("missing.txt"), "image_id\tsha256\toriginal_name\n" + "\n".join(missing) + "\n")
    yield sink.drain()
