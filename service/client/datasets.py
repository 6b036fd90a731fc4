"""Pulling a dataset snapshot into a folder: the server's zip read as it streams, each image checked against its
sha256 before it is written, and a pull that stopped (a broken connection, Ctrl-C) resumed where it stopped.

The archive begins with ``snapshot.json`` and ``labels.csv`` (every image file's name and sha256), then a detection
format's annotation files (which ``snapshot.json`` names; they come with every stream), then the images in image id
order; a resumed pull checks the files already in the folder against ``labels.csv`` and asks the server only for
the images after the last id it has in a row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import httpx

from service.client.http import ApiError, Http

ABOUT = "snapshot.json"
MANIFEST = "labels.csv"
_LOCAL_FILE = b"PK\x03\x04"
_DIRECTORY_STARTS = (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06")  # central directory, (zip64) end record
_LOCAL_HEADER = struct.Struct("<HHHHHIIIHH")  # after the signature: version .. extra field length
_DATA_DESCRIPTOR, _UTF8_NAME, _STORED = 0x08, 0x800, 0
READ_BUFFER = 1 << 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PulledDataset:
    folder: Path
    snapshot_id: int
    format: str  # as asked, or the server's default for the project: imagefolder, or coco for detection
    labels: list[str]  # the project's label order when the snapshot was made (a model's class indices)
    images: int  # in the folder, all verified
    fetched: int  # downloaded by this pull; the others were there already


class BrokenArchive(Exception):
    """The stream ended before the zip did, or is not the zip the server writes."""


def pull_snapshot(
    http: Http, *, snapshot_id: int, folder: Path, fmt: str | None, on_progress: Progress | None = None
) -> PulledDataset:
    pull = _Pull(http, snapshot_id, folder, fmt, on_progress)
    for attempt in range(http.retries + 1):
        if pull.complete():
            break
        after = pull.resume_after()
        try:
            pull.receive(after)
            break
        except (httpx.TransportError, BrokenArchive) as exc:
            if attempt == http.retries:
                raise ApiError(
                    None,
                    "download_broken",
                    f"the download of snapshot {snapshot_id} broke ({exc}) after {attempt + 1} attempt(s); "
                    f"{len(pull.present)} of {len(pull.expected)} images are in {folder}: pull again to fetch the "
                    "rest",
                ) from exc
            http.pause(attempt)
    missing = len(pull.expected) - len(pull.present)
    if missing:
        raise ApiError(None, "download_incomplete", f"the archive of snapshot {snapshot_id} lacked {missing} images")
    about = json.loads((folder / ABOUT).read_text())
    return PulledDataset(folder, snapshot_id, about["format"], about["labels"], len(pull.expected), pull.fetched)


class _Pull:
    """One pull into a folder: what ``labels.csv`` promises (file name: image id, sha256), which of those files
    are there intact, the annotation files ``snapshot.json`` names, and how many images this pull wrote."""

    def __init__(
        self, http: Http, snapshot_id: int, folder: Path, fmt: str | None, on_progress: Progress | None
    ) -> None:
        self.http, self.snapshot_id, self.folder, self.fmt = http, snapshot_id, folder, fmt
        self.on_progress = on_progress
        self.expected: dict[str, tuple[int, str]] = {}
        self.annotation_files: set[str] = set()
        self.present: set[str] = set()
        self.fetched = 0
        self._root = str(folder)
        self._made: set[str] = set()
        self._load_earlier()

    def _load_earlier(self) -> None:
        """Take up an earlier pull into the folder; another snapshot there, or a folder of other files, is
        refused."""
        about_path = self.folder / ABOUT
        if not about_path.exists():
            if self.folder.exists() and any(self.folder.iterdir()):
                raise FileExistsError(
                    f"{self.folder} is not empty and holds no earlier pull ({ABOUT}); pull into a new folder"
                )
            return
        about = json.loads(about_path.read_text())
        if about.get("id") != self.snapshot_id or self.fmt not in (None, about.get("format")):
            raise FileExistsError(
                f"{self.folder} holds snapshot {about.get('id')} as {about.get('format')}; pull snapshot "
                f"{self.snapshot_id} as {self.fmt or 'its default format'} into another folder"
            )
        self.fmt = about["format"]
        self.annotation_files = _annotation_files(about)
        manifest = self.folder / MANIFEST
        if manifest.exists():  # else the earlier pull stopped before it arrived
            self.expected = _read_manifest(manifest.read_bytes())
        self.present = {name for name, (_, sha256) in self.expected.items() if _intact(self.folder / name, sha256)}

    def complete(self) -> bool:
        return (
            bool(self.expected)
            and len(self.present) == len(self.expected)
            and all((self.folder / name).is_file() for name in self.annotation_files)
        )

    def resume_after(self) -> int | None:
        """The archive resumes after the largest image id below which every image is present (the annotation
        files come with it again); None for the whole archive (a fresh pull)."""
        if not self.expected:
            return None
        missing = [image_id for name, (image_id, _) in self.expected.items() if name not in self.present]
        return min(missing) - 1 if missing else max(image_id for image_id, _ in self.expected.values())

    def receive(self, after: int | None) -> None:
        """Read one archive stream into the folder."""
        params = {name: value for name, value in (("format", self.fmt), ("after", after)) if value is not None}
        path = f"/api/v1/snapshots/{self.snapshot_id}/archive"
        with self.http.stream("GET", path, params=params) as response:
            stream = io.BufferedReader(_ChunkReader(response.iter_bytes()), READ_BUFFER)
            for name, data in zip_entries(stream):
                if name in (ABOUT, MANIFEST) or name in self.annotation_files:
                    if name == ABOUT:
                        about = json.loads(data)
                        self.fmt, self.annotation_files = about["format"], _annotation_files(about)
                    elif name == MANIFEST:
                        self.expected.update(_read_manifest(data))
                    self._write(name, data)
                    continue
                if name not in self.expected:
                    raise BrokenArchive(f"the archive holds {name!r}, which its {MANIFEST} does not list")
                if name not in self.present:
                    if hashlib.sha256(data).hexdigest() != self.expected[name][1]:
                        raise BrokenArchive(f"{name} arrived with another sha256 than {MANIFEST} gives")
                    self._write(name, data)
                    self.present.add(name)
                    self.fetched += 1
                if self.on_progress is not None:
                    self.on_progress(len(self.present), len(self.expected))

    def _write(self, name: str, data: bytes) -> None:
        # Plain strings and one unbuffered write: per file, pathlib and a buffer cost as much as the write itself.
        path = os.path.join(self._root, name)
        parent = os.path.dirname(path)
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        with open(path, "wb", buffering=0) as out:
            out.write(data)


def _intact(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except FileNotFoundError:
        return False


def _read_manifest(data: bytes) -> dict[str, tuple[int, str]]:
    rows = csv.DictReader(io.StringIO(data.decode()))
    expected = {row["file_name"]: (int(row["image_id"]), row["sha256"]) for row in rows}
    _check_inside(expected, MANIFEST)
    return expected


def _annotation_files(about: dict[str, Any]) -> set[str]:
    names = set(about.get("annotation_files", []))
    _check_inside(names, ABOUT)
    return names


def _check_inside(names: Iterable[str], listed_in: str) -> None:
    """Each name must be a relative path inside the folder (and not one of the pull's own files)."""
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\\" in name or name in (ABOUT, MANIFEST):
            raise BrokenArchive(f"{listed_in} names a file outside the folder: {name!r}")


def zip_entries(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each entry of a zip read front to back, as the server writes it: entries stored (not
    deflated), each local header carrying its size and CRC."""
    while True:
        signature = stream.read(4)
        if signature in _DIRECTORY_STARTS:
            return
        if signature != _LOCAL_FILE:
            raise BrokenArchive("the stream ended before the archive did" if len(signature) < 4 else "not a zip")
        _, flags, method, _, _, crc, size, _, name_length, extra_length = _LOCAL_HEADER.unpack(_exactly(stream, 26))
        if flags & _DATA_DESCRIPTOR or method != _STORED:
            raise BrokenArchive(
                "the archive has an entry this client cannot read as it streams (deflated, or sizes after the data)"
            )
        name = _exactly(stream, name_length).decode("utf-8" if flags & _UTF8_NAME else "cp437")
        _exactly(stream, extra_length)
        data = _exactly(stream, size)
        if zlib.crc32(data) != crc:
            raise BrokenArchive(f"{name} is damaged (CRC mismatch)")
        yield name, data


def _exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise BrokenArchive("the stream ended before the archive did")
    return data


class _ChunkReader(io.RawIOBase):
    """The chunks of a response body as a readable file."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size
