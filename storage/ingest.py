"""Image ingest: files and zip archives in, validated content-addressed images out.

Work goes in chunks so memory stays bounded however large the upload: each chunk is staged
(copied to local disk while hashing), decoded in parallel, written to the blob store in one
durable batch, and then committed to the database. An image is acknowledged only after its
chunk's commit. One bad file never fails the others: it gets its own rejected outcome.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import IO

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storage.blobs import CHUNK, BlobStore, StagedBlob
from storage.db import Database
from storage.errors import InvalidInput, PayloadTooLarge
from storage.imagecheck import ImageInfo, ImageRejected, decode_for_model, decoded_pixels, inspect_image
from storage.models import Image, ImageSource, Project, QueueTier, Split
from storage.names import display_name
from storage.settings import Settings

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
TEST_SHARE_PERCENT = 20
EMPTY = "the file is empty"


class Outcome(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    rejected = "rejected"


@dataclass
class IngestResult:
    name: str
    status: Outcome
    image_id: int | None = None
    sha256: str | None = None
    code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    max_image_pixels: int
    max_zip_bytes: int
    max_zip_entries: int
    max_files: int
    thumbnail_size: int
    predict_max_files: int
    predict_max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_file_bytes=settings.max_file_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_zip_bytes=settings.max_zip_bytes,
            max_zip_entries=settings.max_zip_entries,
            max_files=settings.max_files_per_request,
            thumbnail_size=settings.thumbnail_size,
            predict_max_files=settings.predict_max_files,
            predict_max_pixels=settings.predict_max_pixels,
        )


@dataclass
class Candidate:
    """One file on its way in: its name, where it came from, and how to read it."""

    name: str
    source: ImageSource
    open: Callable[[], AbstractContextManager[IO[bytes]]]
    declared_size: int | None = None
    rejected: IngestResult | None = None


@dataclass
class _Staged:
    candidate: Candidate
    sha256: str = ""
    path: Path | None = None
    size: int = 0
    info: ImageInfo | None = None
    thumb_sha256: str = ""
    thumb_path: Path | None = None
    result: IngestResult | None = None


def split_for(sha256: str) -> Split:
    """The image's fixed split: about 20% test, decided by its hash so it never changes."""
    return Split.test if int(sha256[:8], 16) % 100 < TEST_SHARE_PERCENT else Split.train


def queue_placement(sha256: str, settings: dict) -> tuple[int, float]:
    """How many independent labels the image needs, and its starting priority.

    Both come from hash bits that the split does not use: a stable choice of the overlapped share
    (``overlap_rate`` of the images get ``overlap_k`` labels) and a deterministic shuffle that
    mining replaces with real priorities later.
    """
    overlapped = int(sha256[16:24], 16) / 2**32 < settings.get("overlap_rate", 0.0)
    return (settings.get("overlap_k", 1) if overlapped else 1), shuffled_priority(sha256)


def shuffled_priority(sha256: str) -> float:
    """A stable place in [0, 1) from hash bits: unmined images wait in a random but repeatable order."""
    return int(sha256[8:16], 16) / 2**32


def _reject(name: str, code: str, reason: str) -> IngestResult:
    return IngestResult(name=name, status=Outcome.rejected, code=code, reason=reason)


def _refused(name: str, source: ImageSource, code: str, reason: str) -> Candidate:
    """A candidate refused before any byte of it is read."""

    def never_opened() -> AbstractContextManager[IO[bytes]]:
        raise AssertionError("a refused candidate is never read")

    return Candidate(name, source, never_opened, rejected=_reject(name, code, reason))


def _unsafe_member_name(name: str) -> str | None:
    """Why a zip member's name could escape its folder, or None when it is safe."""
    if "\x00" in name:
        return "name contains a NUL byte"
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(normalized).parts:
        return "path contains '..'"
    return None


def _rewound(fileobj: IO[bytes]) -> AbstractContextManager[IO[bytes]]:
    """The caller's upload from its start, left open: the caller closes it."""
    fileobj.seek(0)
    return nullcontext(fileobj)


def expand_upload(name: str, fileobj: IO[bytes], *, limits: Limits, source: ImageSource) -> Iterator[Candidate]:
    """Yield the image candidates of one uploaded file: itself, or the members of a zip archive."""
    head = fileobj.read(4)
    fileobj.seek(0)
    if head != ZIP_MAGIC:
        yield Candidate(name=name, source=source, open=functools.partial(_rewound, fileobj))
        return
    try:
        archive = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError) as exc:
        yield _refused(name, source, "bad_zip", f"not a readable zip archive: {exc}")
        return
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) > limits.max_zip_entries:
        yield _refused(
            name,
            source,
            "zip_too_many_entries",
            f"archive has {len(members):,} entries, over the limit of {limits.max_zip_entries:,} "
            "(LABELWHEEL_MAX_ZIP_ENTRIES); split it into smaller archives",
        )
        return
    declared = sum(info.file_size for info in members)
    if declared > limits.max_zip_bytes:
        yield _refused(
            name,
            source,
            "zip_too_large",
            f"archive expands to {declared:,} bytes, over the limit of {limits.max_zip_bytes:,} "
            "(LABELWHEEL_MAX_ZIP_BYTES): a zip bomb, or split it into smaller archives",
        )
        return
    for info in members:
        member_name = f"{name}/{info.filename}"
        unsafe = _unsafe_member_name(info.filename)
        if unsafe:
            yield _refused(member_name, ImageSource.zip, "unsafe_path", f"zip entry refused: {unsafe}")
            continue
        yield Candidate(
            name=member_name,
            source=ImageSource.zip,
            open=functools.partial(archive.open, info),
            declared_size=info.file_size,
        )


def file_opener(path: Path) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    return lambda: path.open("rb")


def candidates_from_folder(root: Path) -> list[Candidate]:
    """Every regular file under ``root``, recursively, in a stable order."""

    return [
        Candidate(
            name=str(path.relative_to(root)),
            source=ImageSource.folder,
            open=file_opener(path),
            declared_size=path.stat().st_size,
        )
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    ]


def _stage(candidate: Candidate, staging: Path, limits: Limits) -> _Staged:
    """Copy the candidate to local disk while hashing it, refusing files over the size limit."""
    staged = _Staged(candidate)
    if candidate.declared_size is not None and candidate.declared_size > limits.max_file_bytes:
        staged.result = _too_large(candidate.name, candidate.declared_size, limits)
        return staged
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=staging, prefix="in.", delete=False) as out:
        staged.path = Path(out.name)
        try:
            with candidate.open() as src:
                while chunk := src.read(CHUNK):
                    size += len(chunk)
                    if size > limits.max_file_bytes:
                        staged.result = _too_large(candidate.name, size, limits)
                        return staged
                    digest.update(chunk)
                    out.write(chunk)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            staged.result = _reject(candidate.name, "bad_zip_member", f"cannot read from the archive: {exc}")
            return staged
    if size == 0:
        staged.result = _reject(candidate.name, "empty_file", EMPTY)
        return staged
    staged.sha256 = digest.hexdigest()
    staged.size = size
    return staged


def _too_large_reason(size: int, limits: Limits) -> str:
    return f"file has more than {limits.max_file_bytes:,} bytes ({size:,} seen), over LABELWHEEL_MAX_FILE_BYTES"


def _too_many_files_reason(limits: Limits) -> str:
    return (
        f"more than {limits.max_files:,} files in one request (LABELWHEEL_MAX_FILES_PER_REQUEST); "
        "send them in several requests"
    )


def _too_large(name: str, size: int, limits: Limits) -> IngestResult:
    return _reject(name, "file_too_large", _too_large_reason(size, limits))


def _inspect(staged: _Staged, staging: Path, limits: Limits) -> _Staged:
    if staged.result is not None or staged.path is None:
        return staged
    try:
        staged.info = inspect_image(
            staged.path, max_pixels=limits.max_image_pixels, thumbnail_size=limits.thumbnail_size
        )
    except ImageRejected as exc:
        staged.result = _reject(staged.candidate.name, "invalid_image", str(exc))
        return staged
    thumb = staged.info.thumbnail_png
    if thumb is None:
        staged.thumb_sha256 = staged.sha256
        return staged
    staged.thumb_sha256 = hashlib.sha256(thumb).hexdigest()
    with tempfile.NamedTemporaryFile(dir=staging, prefix="thumb.", delete=False) as out:
        out.write(thumb)
    staged.thumb_path = Path(out.name)
    return staged


class Ingestor:
    """Runs the ingest pipeline for one project against one database and blob store."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        limits: Limits,
        workers: int = 2,
        chunk_size: int = 256,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.limits = limits
        self.workers = workers
        self.chunk_size = chunk_size

    def ingest(
        self,
        project_id: int,
        candidates: Iterable[Candidate],
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[IngestResult]:
        """Ingest every candidate; returns one result per candidate, in order."""
        results: list[IngestResult] = []
        staging = self.blobs.make_staging_dir("ingest-")
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                chunk: list[Candidate] = []
                for count, candidate in enumerate(candidates, start=1):
                    if count > self.limits.max_files:
                        results.append(_reject(candidate.name, "too_many_files", _too_many_files_reason(self.limits)))
                        continue
                    chunk.append(candidate)
                    if len(chunk) >= self.chunk_size:
                        results.extend(self._ingest_chunk(project_id, chunk, staging, pool))
                        if on_progress:
                            on_progress(len(chunk))
                        chunk = []
                if chunk:
                    results.extend(self._ingest_chunk(project_id, chunk, staging, pool))
                    if on_progress:
                        on_progress(len(chunk))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return results

    def _ingest_chunk(
        self, project_id: int, chunk: Sequence[Candidate], staging: Path, pool: ThreadPoolExecutor
    ) -> list[IngestResult]:
        staged = [_Staged(c, result=c.rejected) if c.rejected else _stage(c, staging, self.limits) for c in chunk]
        try:
            staged = list(pool.map(lambda s: _inspect(s, staging, self.limits), staged))
            good = [s for s in staged if s.result is None]
            blobs: list[StagedBlob] = []
            for s in good:
                assert s.path is not None
                blobs.append(StagedBlob(s.sha256, s.path))
                if s.thumb_path is not None:
                    blobs.append(StagedBlob(s.thumb_sha256, s.thumb_path))
            self.blobs.put_many(blobs)
            if good:
                self._record_with_retries(project_id, good)
        finally:
            for s in staged:
                for path in (s.path, s.thumb_path):
                    if path is not None:
                        path.unlink(missing_ok=True)
        return [s.result for s in staged if s.result is not None]

    def _record_with_retries(self, project_id: int, good: Sequence[_Staged], attempts: int = 5) -> None:
        for attempt in range(1, attempts + 1):
            try:
                self._record(project_id, good)
                return
            except IntegrityError:
                # Another request stored some of the same images meanwhile: on the next attempt they
                # are found as existing and reported as duplicates.
                if attempt == attempts:
                    raise
                log.info("ingest race on project %s; retrying the chunk's rows (attempt %d)", project_id, attempt)

    def _record(self, project_id: int, good: Sequence[_Staged]) -> None:
        """Insert rows for new images; point duplicates at the existing image. One transaction."""
        hashes = {s.sha256 for s in good}
        with self.db.session() as session:
            project_settings = session.get_one(Project, project_id).settings
            existing = dict(
                session.execute(
                    select(Image.sha256, Image.id).where(Image.project_id == project_id, Image.sha256.in_(hashes))
                ).all()
            )
            new_rows: dict[str, Image] = {}
            for s in good:
                if s.sha256 in existing or s.sha256 in new_rows:
                    continue
                assert s.info is not None
                labels_needed, priority = queue_placement(s.sha256, project_settings)
                new_rows[s.sha256] = Image(
                    labels_needed=labels_needed,
                    priority=priority,
                    queue_tier=QueueTier.fresh,
                    project_id=project_id,
                    sha256=s.sha256,
                    thumbnail_sha256=s.thumb_sha256,
                    width=s.info.width,
                    height=s.info.height,
                    format=s.info.format,
                    byte_size=s.size,
                    exif_orientation=s.info.exif_orientation,
                    split=split_for(s.sha256),
                    source=s.candidate.source,
                    original_name=display_name(s.candidate.name, max_length=1024),
                )
            session.add_all(new_rows.values())
            session.flush()
        first_seen: set[str] = set()
        for s in good:
            if s.sha256 in new_rows and s.sha256 not in first_seen:
                first_seen.add(s.sha256)
                status, image_id = Outcome.accepted, new_rows[s.sha256].id
            else:
                status = Outcome.duplicate
                image_id = existing.get(s.sha256) or new_rows[s.sha256].id
            s.result = IngestResult(name=s.candidate.name, status=status, image_id=image_id, sha256=s.sha256)


def ingest_uploads(
    *,
    db: Database,
    blobs: BlobStore,
    limits: Limits,
    project_id: int,
    uploads: Sequence[tuple[str, IO[bytes]]],
) -> list[IngestResult]:
    """Ingest uploaded files (images or zip archives) into a project (the caller checked access)."""
    if not uploads:
        raise InvalidInput("the upload has no files: send them in the repeatable form field 'files'", code="no_files")
    candidates = (
        candidate
        for name, fileobj in uploads
        for candidate in expand_upload(name, fileobj, limits=limits, source=ImageSource.upload)
    )
    return Ingestor(db=db, blobs=blobs, limits=limits).ingest(project_id, candidates)


def decode_uploads(uploads: Sequence[tuple[str, IO[bytes]]], *, limits: Limits, size: int) -> Iterator[PILImage.Image]:
    """Uploaded images for a model with ``size`` x ``size`` inputs (predictions: nothing is stored), decoded one
    at a time as the caller takes them, each only as large as the model needs (``decode_for_model``).

    Every file is checked from its header before any is decoded: the number of files, their bytes, format and
    pixels, and the pixels the whole request will decode. The first refused file fails the request, with the code
    an upload reports for it: ``too_many_files``, ``too_many_pixels`` and ``file_too_large`` (413), ``empty_file``
    and ``invalid_image`` (422); the message names the file and the setting that sets the limit.
    """
    if len(uploads) > limits.predict_max_files:
        raise PayloadTooLarge(
            f"{len(uploads):,} files in one prediction request, over the limit of {limits.predict_max_files:,} "
            "(LABELWHEEL_PREDICT_MAX_FILES); send them in several requests",
            code="too_many_files",
        )
    total = sum(_pixels(name, fileobj, limits, size) for name, fileobj in uploads)
    if total > limits.predict_max_pixels:
        raise PayloadTooLarge(
            f"the request's images decode to {total:,} pixels, over the limit of {limits.predict_max_pixels:,} "
            "(LABELWHEEL_PREDICT_MAX_PIXELS); send fewer or smaller images per request",
            code="too_many_pixels",
        )
    return (_decoded(name, fileobj, limits, size) for name, fileobj in uploads)


def _pixels(name: str, fileobj: IO[bytes], limits: Limits, size: int) -> int:
    length = fileobj.seek(0, os.SEEK_END)
    fileobj.seek(0)
    if length > limits.max_file_bytes:
        raise PayloadTooLarge(f"{name}: {_too_large_reason(length, limits)}", code="file_too_large")
    if length == 0:
        raise InvalidInput(f"{name}: {EMPTY}", code="empty_file")
    try:
        return decoded_pixels(fileobj, max_pixels=limits.max_image_pixels, size=size)
    except ImageRejected as exc:
        raise InvalidInput(f"{name}: {exc}", code="invalid_image") from None


def _decoded(name: str, fileobj: IO[bytes], limits: Limits, size: int) -> PILImage.Image:
    fileobj.seek(0)
    try:
        return decode_for_model(fileobj, max_pixels=limits.max_image_pixels, size=size)
    except ImageRejected as exc:
        raise InvalidInput(f"{name}: {exc}", code="invalid_image") from None
