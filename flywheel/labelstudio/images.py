"""Task images fetched from the project's Label Studio host, and only from there.

A task's ``data.image`` is a path on Label Studio (``/data/upload/...``) or a URL. Either must resolve to the
configured origin (scheme, host and port all equal, no user info): anything else is refused before a byte is
fetched, so a task cannot make labelwheel reach another address (server-side request forgery). Redirects are
not followed (a redirect could lead elsewhere), the body is read up to the upload size limit, and the bytes go
through the same ingest as uploads (format, size, pixels; deduplicated by sha256). A fetched task is
remembered with its image, so it is never fetched twice while its reference stays the same.
"""

from __future__ import annotations

import functools
import io
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx
from sqlalchemy import select

from annotation.imports import TaskRejected
from annotation.labelstudio_tasks import Target, image_reference
from flywheel.labelstudio.links import origin_of
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import InvalidInput
from storage.ingest import Candidate, Ingestor, Limits, Outcome
from storage.models import ImageSource, LabelStudioTask

FETCH_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
FETCHERS = 4  # images fetched at once from Label Studio


def valid_id(value: Any) -> bool:
    """A Label Studio id as the tables hold them (64-bit)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63


@dataclass(frozen=True)
class Source:
    """Where a project's images may come from: the Label Studio origin, and its API token."""

    origin: str
    access_token: str


def allowed_url(source: Source, reference: str) -> str:
    """The URL to fetch for a task's image reference; TaskRejected unless it is on the configured origin."""
    if any(ord(c) < 32 or c in "\\\x7f" for c in reference):
        raise TaskRejected("image_not_allowed", "the task's image reference holds control characters or backslashes")
    if reference.startswith("/") and not reference.startswith("//"):
        url = source.origin + reference
    else:
        url = reference
    parts = urlsplit(url)
    try:
        origin = origin_of(f"{parts.scheme}://{parts.netloc}")
    except InvalidInput:
        origin = None
    if origin != source.origin:
        raise TaskRejected(
            "image_not_allowed",
            f"the task's image {reference[:200]!r} is not on the configured Label Studio host {source.origin}: "
            "labelwheel fetches task images from there only, so nothing was fetched",
            {"image": reference[:300], "allowed": source.origin},
        )
    return url


def _fetch(client: httpx.Client, source: Source, url: str, limits: Limits) -> bytes:
    try:
        with client.stream("GET", url, headers={"Authorization": f"Token {source.access_token}"}) as response:
            if response.status_code != 200:
                where = f" to {response.headers.get('location', '')[:200]}" if response.is_redirect else ""
                raise TaskRejected(
                    "image_fetch_failed",
                    f"Label Studio answered {response.status_code}{where} for the task's image; redirects are not "
                    "followed",
                )
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limits.max_file_bytes:
                    raise TaskRejected(
                        "file_too_large", f"the task's image is larger than {limits.max_file_bytes:,} bytes"
                    )
            return bytes(data)
    except httpx.HTTPError as exc:
        raise TaskRejected("image_fetch_failed", f"the task's image could not be fetched: {exc}"[:300]) from None


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every fetch (the system's CAs): making one loads them, a good part of a small fetch's
    time."""
    return ssl.create_default_context()


def _opener(data: bytes) -> Any:
    def open_bytes() -> AbstractContextManager[IO[bytes]]:
        return io.BytesIO(data)

    return open_bytes


def task_images(
    *,
    db: Database,
    blobs: BlobStore,
    limits: Limits,
    project_id: int,
    source: Source,
    tasks: Sequence[dict[str, Any]],
    target: Target,
) -> list[int | TaskRejected]:
    """Each task's image id in the project, in order, or why it has none (refused, unreadable, not an image)."""
    found: list[int | TaskRejected | None] = [None] * len(tasks)
    references: list[str | None] = [None] * len(tasks)
    for k, task in enumerate(tasks):
        if not isinstance(task, dict) or not valid_id(task.get("id")) or not isinstance(task.get("data"), dict):
            found[k] = TaskRejected("invalid_task", "a task needs a positive integer id and a data object")
            continue
        reference = image_reference(task, target)
        if reference is None:
            found[k] = TaskRejected("no_image", "the task's data has no image reference")
        elif len(reference) > 2000:
            found[k] = TaskRejected("image_not_allowed", "the task's image reference is longer than 2,000 characters")
        else:
            references[k] = reference
    task_ids = [task["id"] for task, ref in zip(tasks, references, strict=True) if ref is not None]
    with db.read_session() as session:
        cached = {
            (row.ls_task_id, row.reference): row.image_id
            for row in session.scalars(
                select(LabelStudioTask).where(
                    LabelStudioTask.project_id == project_id, LabelStudioTask.ls_task_id.in_(task_ids)
                )
            )
        }
    to_fetch: dict[int, str] = {}
    for k, reference in enumerate(references):
        if reference is None:
            continue
        key = (tasks[k]["id"], reference)
        if key in cached:
            found[k] = cached[key]
            continue
        try:
            to_fetch[k] = allowed_url(source, reference)
        except TaskRejected as exc:
            found[k] = exc
    if to_fetch:
        candidates: dict[int, Candidate] = {}

        def fetch(item: tuple[int, str]) -> tuple[int, str, bytes | TaskRejected]:
            k, url = item
            try:
                return k, url, _fetch(client, source, url, limits)
            except TaskRejected as exc:
                return k, url, exc

        with (
            httpx.Client(follow_redirects=False, timeout=FETCH_TIMEOUT, trust_env=False, verify=_tls()) as client,
            ThreadPoolExecutor(FETCHERS) as pool,
        ):
            for k, url, data in pool.map(fetch, to_fetch.items()):
                if isinstance(data, TaskRejected):
                    found[k] = data
                    continue
                name = PurePosixPath(unquote(urlsplit(url).path)).name or f"task-{tasks[k]['id']}"
                candidates[k] = Candidate(name=name, source=ImageSource.label_studio, open=_opener(data))
        results = Ingestor(db=db, blobs=blobs, limits=limits).ingest(project_id, list(candidates.values()))
        stored: dict[int, int] = {}
        for k, result in zip(candidates, results, strict=True):
            if result.status is Outcome.rejected or result.image_id is None:
                found[k] = TaskRejected(
                    result.code or "invalid_image", f"the task's image was refused: {result.reason}"
                )
            else:
                found[k] = stored[k] = result.image_id
        _remember(db, project_id=project_id, tasks=tasks, references=references, stored=stored)
    return [item if item is not None else TaskRejected("no_image", "no image") for item in found]


def _remember(
    db: Database,
    *,
    project_id: int,
    tasks: Sequence[dict[str, Any]],
    references: list[str | None],
    stored: dict[int, int],
) -> None:
    rows = {tasks[k]["id"]: (references[k], image_id) for k, image_id in stored.items()}
    with db.session() as session:
        for task_id, (reference, image_id) in rows.items():
            assert reference is not None
            row = session.get(LabelStudioTask, (project_id, task_id))
            if row is None:
                session.add(
                    LabelStudioTask(project_id=project_id, ls_task_id=task_id, reference=reference, image_id=image_id)
                )
            else:
                row.reference, row.image_id = reference, image_id
