"""What every streamed export shares: images read by id in keyset batches, each batch (and its current
annotations, in one more query) in a short read-only session of its own, and the JSON pieces the formats are
written with.

An export never holds the whole project in memory and never holds one long transaction: on SQLite a read-only
session takes no write lock, and nothing stays open while a batch is sent. The batches are not one snapshot:
labels submitted during an export may or may not be in it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import Annotation, AnnotationOrigin, User

EXPORT_BATCH = 1000
# A streamed export runs in one of the server's worker threads and is CPU-bound; left alone it gives
# the GIL back only when forced (every 5 ms), so each request thread waiting for it would stall that
# long at every hand-off. Yielding every few items (~1-2 ms of work) keeps other requests quick.
YIELD_EVERY_ITEMS = 25
YIELD_EVERY_ROWS = 250

T = TypeVar("T")


class HasId(Protocol):
    @property
    def id(self) -> int: ...


Item = TypeVar("Item", bound=HasId)


@dataclass(frozen=True)
class ExportedAnnotation:
    id: int
    annotator_id: int
    annotator: str
    label: str | None  # classification
    boxes: list[dict[str, Any]] | None  # detection: {label, x, y, w, h} in pixels of the upright image
    duration_ms: int | None
    origin: AnnotationOrigin
    created_at: datetime


def polite(items: Iterable[T], every: int) -> Iterator[T]:
    """The items, letting other threads have the interpreter after every ``every`` of them."""
    for n, item in enumerate(items, start=1):
        if n % every == 0:
            time.sleep(0)  # releases the GIL: a waiting request thread takes it at once
        yield item


def keyset_batches(
    db: Database, read_batch: Callable[[Session, int, int], list[Item]], *, batch_size: int = EXPORT_BATCH
) -> Iterator[list[Item]]:
    """``read_batch(session, after_id, limit)`` again and again, each in its own short session, until it is empty."""
    after = 0
    while True:
        with db.read_session() as session:
            batch = read_batch(session, after, batch_size)
        # The session is closed here, before the caller sees the batch: nothing stays open while it is sent.
        if not batch:
            return
        yield batch
        after = batch[-1].id


def current_annotations(session: Session, *, image_ids: Sequence[int]) -> dict[int, list[ExportedAnnotation]]:
    """The current annotation of each annotator, by image, oldest first."""
    by_image: dict[int, list[ExportedAnnotation]] = defaultdict(list)
    rows = session.execute(
        select(
            Annotation.image_id,
            Annotation.id,
            Annotation.annotator_id,
            User.name,
            Annotation.label,
            Annotation.boxes,
            Annotation.duration_ms,
            Annotation.origin,
            Annotation.created_at,
        )
        .join(User, User.id == Annotation.annotator_id)
        .where(Annotation.image_id.in_(image_ids), Annotation.is_current)
        .order_by(Annotation.image_id, Annotation.id)
    )
    for image_id, *fields in polite(rows, YIELD_EVERY_ROWS):
        by_image[image_id].append(ExportedAnnotation(*fields))
    return by_image


def timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_array_chunks(batches: Iterable[list[T]], item: Callable[[T], Any]) -> Iterator[str]:
    """A JSON array written a batch at a time: ``[``, the items separated by commas, ``]``."""
    opening = "["
    for batch in batches:
        yield opening + "\n" + ",\n".join(dumps(item(image)) for image in polite(batch, YIELD_EVERY_ITEMS))
        opening = ","
    yield "\n]\n" if opening == "," else "[]\n"


def lead_time(duration_ms: int | None) -> float | None:
    """Label Studio's ``lead_time``: seconds."""
    return duration_ms / 1000 if duration_ms is not None else None
