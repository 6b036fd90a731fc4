"""Submitting answers: idempotent, append-only, with the image's consensus kept current.

One path for both kinds of project: an answer is a label (classification) or a list of boxes (detection),
and everything else (leases, idempotency, corrections, gold, overlap, review) does not care which.
Every submission is one transaction that adds the annotation row, closes the lease, and updates
the image's label count, queue place and consensus, so nothing later has to scan all
annotations to know an image's current label.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation.box_answers import DrawnBox, check_boxes, matches_gold, raw_boxes
from annotation.consensus import refresh_consensus
from annotation.queue import capacity_left
from storage.errors import Conflict, InvalidInput, NotFound
from storage.models import (
    Annotation,
    AnnotationOrigin,
    Assignment,
    AssignmentStatus,
    Image,
    Project,
    Role,
    TaskType,
    utcnow,
)
from storage.names import nfc
from storage.users import Principal

MAX_DURATION_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Submitted:
    annotation: Annotation
    replayed: bool  # True when an Idempotency-Key matched an earlier, identical request


def check_label(project: Project, label: str) -> str:
    """The label as the project stores it (NFC, whichever form it was typed in); InvalidInput when unknown."""
    label = nfc(label)
    if label not in project.labels:
        shown = ", ".join(project.labels[:50]) + (" ..." if len(project.labels) > 50 else "")
        raise InvalidInput(
            f"unknown label {label!r} for project {project.id}; valid labels: {shown}",
            code="unknown_label",
            details={"valid_labels": project.labels},
        )
    return label


def check_kind(project: Project, *, label: str | None, boxes: Sequence[DrawnBox] | None) -> None:
    """An answer of the project's kind: a label for classification, boxes (maybe none) for detection."""
    if project.task_type is TaskType.detection:
        if label is not None or boxes is None:
            raise InvalidInput(
                f"project {project.id} is a detection project: send `boxes`, a list of {{label, x, y, w, h}} in pixels "
                "of the upright image ([] when the image shows no object), and no `label`",
                code="wrong_answer_kind",
            )
    elif boxes is not None or label is None:
        raise InvalidInput(
            f"project {project.id} is a classification project: send `label`, one of its labels, and no `boxes`",
            code="wrong_answer_kind",
        )


@dataclass(frozen=True)
class Answer:
    label: str | None  # classification
    boxes: list[dict[str, Any]] | None  # detection, as stored: clipped, labels in NFC


def check_answer(project: Project, image: Image, *, label: str | None, boxes: Sequence[DrawnBox] | None) -> Answer:
    """The answer as stored; InvalidInput when it is of the wrong kind for the project or not valid."""
    check_kind(project, label=label, boxes=boxes)
    if boxes is not None:
        return Answer(label=None, boxes=check_boxes(project, image, boxes))
    assert label is not None  # check_kind: a classification answer has a label
    return Answer(label=check_label(project, label), boxes=None)


def gold_correct(image: Image, *, label: str | None, boxes: list[dict[str, Any]] | None) -> bool | None:
    """Whether an answer matches the image's gold answer; None when the image is no gold question."""
    if image.gold_boxes is not None:
        return boxes is not None and matches_gold(boxes, image.gold_boxes)
    if image.gold_label is not None:
        return label == image.gold_label
    return None


def project_image(session: Session, *, project: Project, image_id: int, lock: bool = False) -> Image:
    """The image if it belongs to the project; NotFound otherwise (another project's id included)."""
    query = select(Image).where(Image.id == image_id, Image.project_id == project.id)
    image = session.scalar(query.with_for_update() if lock else query)
    if image is None:
        raise NotFound(f"image {image_id} not found in project {project.id}", code="image_not_found")
    return image


def _request_hash(
    image_id: int, *, label: str | None, boxes: Sequence[DrawnBox] | None, duration_ms: int | None
) -> str:
    # A classification request hashes as it always has, so keys stored before detection existed still replay.
    answer: dict[str, Any] = {"label": label} if boxes is None else {"boxes": raw_boxes(boxes)}
    body = json.dumps({"image_id": image_id, **answer, "duration_ms": duration_ms}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _replay(session: Session, *, annotator_id: int, key: str, request_hash: str) -> Annotation | None:
    earlier = session.scalar(
        select(Annotation).where(Annotation.annotator_id == annotator_id, Annotation.idempotency_key == key)
    )
    if earlier is not None and earlier.request_hash != request_hash:
        raise InvalidInput(
            f"Idempotency-Key {key!r} was used for a different request; use a new key for a new label",
            code="idempotency_key_reused",
        )
    return earlier


def submit_annotation(
    session: Session,
    *,
    principal: Principal,
    project: Project,
    image_id: int,
    label: str | None = None,
    boxes: Sequence[DrawnBox] | None = None,
    duration_ms: int | None = None,
    idempotency_key: str | None = None,
) -> Submitted:
    """Record one answer: a label, or boxes in a detection project. A second answer by the same annotator is a
    correction: it supersedes the first."""
    check_kind(project, label=label, boxes=boxes)
    label = check_label(project, label) if label is not None else None
    request_hash = _request_hash(image_id, label=label, boxes=boxes, duration_ms=duration_ms)
    if idempotency_key:
        earlier = _replay(session, annotator_id=principal.id, key=idempotency_key, request_hash=request_hash)
        if earlier is not None:
            return Submitted(earlier, replayed=True)
    if duration_ms is not None and not 0 <= duration_ms <= MAX_DURATION_MS:
        raise InvalidInput(f"duration_ms must be between 0 and {MAX_DURATION_MS}", code="invalid_duration")
    # Locking the image row serializes submissions for one image on PostgreSQL (SQLite serializes all writers).
    image = project_image(session, project=project, image_id=image_id, lock=True)
    stored_boxes = check_boxes(project, image, boxes) if boxes is not None else None
    now = utcnow()
    previous = session.scalar(
        select(Annotation).where(
            Annotation.image_id == image.id, Annotation.annotator_id == principal.id, Annotation.is_current
        )
    )
    assignment = session.scalar(
        select(Assignment).where(Assignment.image_id == image.id, Assignment.annotator_id == principal.id)
    )
    if previous is None:
        holds_lease = (
            assignment is not None and assignment.status is AssignmentStatus.leased and assignment.expires_at > now
        )
        if (
            not holds_lease
            and not image.is_gold
            and not capacity_left(session, image=image, annotator_id=principal.id, now=now)
        ):
            raise Conflict(
                f"image {image.id} already has the labels it needs (your lease expired or was never taken, and "
                "others labeled it meanwhile); nothing was stored: ask for the next task",
                code="lease_lost",
            )
    annotation = Annotation(
        project_id=project.id,
        image_id=image.id,
        annotator_id=principal.id,
        label=label,
        boxes=stored_boxes,
        duration_ms=duration_ms,
        origin=AnnotationOrigin.human,
        is_current=True,
        supersedes_id=previous.id if previous else None,
        gold_correct=gold_correct(image, label=label, boxes=stored_boxes),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    try:
        # Everything pending goes inside the savepoint: begin_nested() flushes what is pending before
        # it starts, so a row added outside it would fail outside the savepoint and abort the transaction.
        with session.begin_nested():
            if previous is not None:
                previous.is_current = False
            session.add(annotation)
    except IntegrityError:
        # The same Idempotency-Key raced in from a parallel retry: answer with the row that won.
        if idempotency_key:
            earlier = _replay(session, annotator_id=principal.id, key=idempotency_key, request_hash=request_hash)
            if earlier is not None:
                return Submitted(earlier, replayed=True)
        raise
    if assignment is None:
        assignment = Assignment(project_id=project.id, image_id=image.id, annotator_id=principal.id, expires_at=now)
        session.add(assignment)
    assignment.status = AssignmentStatus.submitted
    assignment.updated_at = now
    if previous is None:
        image.label_count += 1
    refresh_consensus(session, project=project, image=image)
    session.flush()
    return Submitted(annotation, replayed=False)


def withdraw_answer(session: Session, *, project: Project, image_id: int, annotator_id: int) -> bool:
    """Take back an annotator's current answer (deleted in the tool it came from): it stays in the history, no
    longer current, and the image's count, consensus and queue place follow. False when there was none."""
    image = project_image(session, project=project, image_id=image_id, lock=True)
    current = session.scalar(
        select(Annotation).where(
            Annotation.image_id == image.id, Annotation.annotator_id == annotator_id, Annotation.is_current
        )
    )
    if current is None:
        return False
    current.is_current = False
    image.label_count = max(image.label_count - 1, 0)
    session.flush()
    refresh_consensus(session, project=project, image=image)
    session.flush()
    return True


def visible_annotator(principal: Principal, requested: int | None) -> int | None:
    """Annotators see only their own labels (overlapped images get independent ones); others see all."""
    if principal.role is Role.annotator:
        return principal.id
    return requested


def list_annotations(
    session: Session,
    *,
    project_id: int,
    after: int | None,
    limit: int,
    annotator_id: int | None = None,
    image_id: int | None = None,
    current_only: bool = False,
) -> list[Annotation]:
    query = select(Annotation).where(Annotation.project_id == project_id)
    if after is not None:
        query = query.where(Annotation.id > after)
    if annotator_id is not None:
        query = query.where(Annotation.annotator_id == annotator_id)
    if image_id is not None:
        query = query.where(Annotation.image_id == image_id)
    if current_only:
        query = query.where(Annotation.is_current)
    return list(session.scalars(query.order_by(Annotation.id).limit(limit)))
