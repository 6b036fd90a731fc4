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
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Connection, Exists, Select, and_, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from annotation.box_answers import DrawnBox, check_boxes, matches_gold, raw_boxes
from annotation.consensus import apply_answers, refresh_consensus
from annotation.queue import OpenImagesLocked, Task, capacity_left, next_task
from annotation.report_marks import mark_reports_outdated
from storage.driver_sql import DriverStatement
from storage.errors import Conflict, InvalidInput, NotFound
from storage.models import (
    Annotation,
    AnnotationOrigin,
    AnnotatorExclusion,
    Assignment,
    AssignmentStatus,
    ConsensusFit,
    Image,
    Membership,
    Project,
    Role,
    TaskType,
    User,
    utcnow,
)
from storage.names import nfc
from storage.projects import ProjectSettings, project_settings
from storage.users import Principal

MAX_DURATION_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Submitted:
    annotation: Annotation
    replayed: bool  # True when an Idempotency-Key matched an earlier, identical request
    # Whether the annotator holds a live lease on another image of the project, as this transaction read it; None
    # when it did not, or started over (``lease_next_after`` may skip its own look in the same transaction).
    other_lease: bool | None = None


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
        raise _key_reused(key)
    return earlier


def _key_reused(key: str) -> InvalidInput:
    return InvalidInput(
        f"Idempotency-Key {key!r} was used for a different request; use a new key for a new label",
        code="idempotency_key_reused",
    )


def _excluded(annotator_id: Any) -> Exists:
    return (
        select(AnnotatorExclusion.id)
        .where(
            AnnotatorExclusion.project_id == Image.project_id,
            AnnotatorExclusion.annotator_id == annotator_id,
            AnnotatorExclusion.revoked_at.is_(None),
        )
        .exists()
    )


def _situation_query() -> Select[Any]:
    """The image's current answers (each with whether its annotator is excluded from consensus), every row carrying
    the caller's assignment, their answer under the request's Idempotency-Key, whether they are excluded, the
    project's annotator members, whether a consensus fit exists, whether the caller holds a live lease on another of
    the project's images, the project's settings as they are now, and the image's own columns. An image without
    answers gives one row, its answer columns NULL; an image of another project (or none) gives no row."""
    me: BindParameter[int] = bindparam("annotator_id")
    other = aliased(Assignment)
    other_lease = select(other.id).where(
        other.annotator_id == me,
        other.project_id == Image.project_id,
        other.status == AssignmentStatus.leased,
        other.expires_at > bindparam("now", type_=Assignment.expires_at.type),
        other.image_id != Image.id,
    )
    earlier = aliased(Annotation)
    under_key = select(earlier.id, earlier.request_hash).where(
        earlier.annotator_id == me, earlier.idempotency_key == bindparam("key")
    )
    annotators = (
        select(func.count())
        .select_from(Membership)
        .join(User, User.id == Membership.user_id)
        .where(Membership.project_id == Image.project_id, User.role == Role.annotator)
        .scalar_subquery()
    )
    return (
        select(
            Annotation.id,
            Annotation.annotator_id,
            Annotation.label,
            Annotation.boxes,
            _excluded(Annotation.annotator_id),
            Assignment.id,
            Assignment.status,
            Assignment.expires_at,
            under_key.with_only_columns(earlier.id).scalar_subquery(),
            under_key.with_only_columns(earlier.request_hash).scalar_subquery(),
            _excluded(me),
            annotators,
            select(ConsensusFit.project_id).where(ConsensusFit.project_id == Image.project_id).exists(),
            other_lease.exists(),
            select(Project.settings).where(Project.id == Image.project_id).scalar_subquery(),
            *Image.columns(),
        )
        .select_from(Image)
        .outerjoin(Annotation, and_(Annotation.image_id == Image.id, Annotation.is_current))
        .outerjoin(Assignment, and_(Assignment.image_id == Image.id, Assignment.annotator_id == me))
        .where(Image.id == bindparam("image_id"), Image.project_id == bindparam("project_id"))
    )


_SITUATION_QUERY = _situation_query()
_SITUATION = DriverStatement(_SITUATION_QUERY)  # compiled once: it runs on every submission
_IMAGE_AT = len(_SITUATION_QUERY.selected_columns) - len(Image.columns())  # where a situation row's image columns start
# PostgreSQL: the image row locked first, so the situation is read once a concurrent submission for it committed.
_LOCK_IMAGE = DriverStatement(
    select(Image.id)
    .where(Image.id == bindparam("image_id"), Image.project_id == bindparam("project_id"))
    .with_for_update()
)


@dataclass(frozen=True)
class _Answer:
    id: int
    value: Any  # the label, or the boxes
    excluded: bool  # its annotator's answers do not count for consensus


@dataclass(frozen=True)
class _Situation:
    image: Image  # transient: the submission writes its changes with one UPDATE
    answers: dict[int, _Answer]  # the image's current answers by annotator
    assignment_id: int | None
    lease_status: AssignmentStatus | None
    lease_expires_at: datetime | None
    earlier_id: int | None  # the caller's annotation under the request's Idempotency-Key
    earlier_hash: str | None
    me_excluded: bool
    annotators: int  # the project's annotator members
    fit: bool  # the project has a consensus fit
    other_lease: bool  # the caller holds a live lease on another image of the project
    settings: dict[str, Any]  # the project's, read after the image's lock (the access statement's may be older)


def _situation(
    session: Session, *, project: Project, image_id: int, annotator_id: int, key: str | None, now: datetime
) -> _Situation:
    """The image locked and read with what a submission needs to know; NotFound when it is not the project's.

    SQLite runs one writer at a time (this transaction began with the write lock): no row lock to take first."""
    connection = session.connection()
    params = {"annotator_id": annotator_id, "image_id": image_id, "project_id": project.id, "key": key, "now": now}
    locked = connection.dialect.name == "sqlite" or _LOCK_IMAGE.first(connection, params) is not None
    rows = _SITUATION.rows(connection, params) if locked else []
    if not rows:
        raise NotFound(f"image {image_id} not found in project {project.id}", code="image_not_found")
    first = rows[0]
    return _Situation(
        image=Image.from_columns(first[_IMAGE_AT:]),
        answers={r[1]: _Answer(r[0], r[2] if r[2] is not None else r[3], bool(r[4])) for r in rows if r[0] is not None},
        assignment_id=first[5],
        lease_status=first[6],
        lease_expires_at=first[7],
        earlier_id=first[8],
        earlier_hash=first[9],
        me_excluded=bool(first[10]),
        annotators=first[11] or 0,
        fit=bool(first[12]),
        other_lease=bool(first[13]),
        settings=first[14] or {},
    )


_ANSWER_COLUMNS = (  # every column but the id, in the table's order
    "project_id",
    "image_id",
    "annotator_id",
    "label",
    "boxes",
    "duration_ms",
    "origin",
    "is_current",
    "supersedes_id",
    "gold_correct",
    "idempotency_key",
    "request_hash",
    "created_at",
)
# What a submission may change on its image: the count, the queue place and the consensus.
_IMAGE_COLUMNS = (
    "label_count",
    "labels_needed",
    "queue_tier",
    "review_reason",
    "consensus_label",
    "consensus_tie",
    "consensus_posterior",
    "consensus_boxes",
    "consensus_weak",
)
# Compiled once: they run on every submission.
_INSERT_ANSWER = DriverStatement(insert(Annotation).returning(Annotation.id), keys=_ANSWER_COLUMNS)
_SUPERSEDE = DriverStatement(update(Annotation).where(Annotation.id == bindparam("answer_id")).values(is_current=False))
_ASSIGNMENT_COLUMNS = ("project_id", "image_id", "annotator_id", "status", "expires_at", "updated_at")
_INSERT_ASSIGNMENT = DriverStatement(insert(Assignment), keys=_ASSIGNMENT_COLUMNS)
_CLOSE_ASSIGNMENT = DriverStatement(
    update(Assignment)
    .where(Assignment.id == bindparam("assignment_id"))
    .values(status=AssignmentStatus.submitted, updated_at=bindparam("now"))
)
_UPDATE_IMAGE = DriverStatement(
    update(Image).where(Image.id == bindparam("image_id")).values({c: bindparam(f"new_{c}") for c in _IMAGE_COLUMNS})
)


def _writes_query() -> Select[Any]:
    """PostgreSQL: ``_write``'s statements as one (writable CTEs), answering the answer's id. The CTEs touch
    different rows, and the row triggers on these tables read only their own row: they run after the statement, as
    they would after the last of the separate statements."""
    answer = insert(Annotation).values({c: bindparam(c) for c in _ANSWER_COLUMNS}).returning(Annotation.id)
    superseded = update(Annotation).where(Annotation.id == bindparam("supersedes_id")).values(is_current=False)
    # The caller's assignment closed (status and time; it keeps its expiry), or added as submitted when none exists.
    assignment = postgresql.insert(Assignment).values(
        project_id=bindparam("project_id"),
        image_id=bindparam("image_id"),
        annotator_id=bindparam("annotator_id"),
        status=AssignmentStatus.submitted,
        expires_at=bindparam("created_at"),
        updated_at=bindparam("created_at"),
    )
    assignment = assignment.on_conflict_do_update(
        index_elements=[Assignment.image_id, Assignment.annotator_id],
        set_={"status": assignment.excluded.status, "updated_at": assignment.excluded.updated_at},
    )
    image = (
        update(Image)
        .where(Image.id == bindparam("image_id"))
        .values({c: bindparam(f"new_{c}") for c in _IMAGE_COLUMNS})
    )
    written = answer.cte("answer")
    return select(written.c.id).add_cte(superseded.cte("superseded"), assignment.cte("assignment"), image.cte("image"))


_WRITES = DriverStatement(_writes_query())


def _write(connection: Connection, *, row: dict[str, Any], assignment_id: int | None, image: Image) -> int:
    """Store the answer ``row`` (superseding the caller's previous one), close or add the caller's assignment and
    write the image's new state; the answer's id. One statement on PostgreSQL, where each statement is a round trip
    that costs the API process its CPU in the driver; up to four on SQLite, in process."""
    new_state = {f"new_{name}": getattr(image, name) for name in _IMAGE_COLUMNS}
    if connection.dialect.name == "postgresql":
        ((annotation_id,),) = _WRITES.rows(connection, {**row, **new_state})
        return int(annotation_id)
    ((annotation_id,),) = _INSERT_ANSWER.rows(connection, row)
    if row["supersedes_id"] is not None:
        _SUPERSEDE.rows(connection, {"answer_id": row["supersedes_id"]})
    if assignment_id is None:
        now = row["created_at"]
        _INSERT_ASSIGNMENT.rows(
            connection,
            {
                "project_id": row["project_id"],
                "image_id": row["image_id"],
                "annotator_id": row["annotator_id"],
                "status": AssignmentStatus.submitted,
                "expires_at": now,
                "updated_at": now,
            },
        )
    else:
        _CLOSE_ASSIGNMENT.rows(connection, {"assignment_id": assignment_id, "now": row["created_at"]})
    # The image's new state in one UPDATE (the object is in no session: nothing else writes it).
    _UPDATE_IMAGE.rows(connection, {"image_id": image.id, **new_state})
    return int(annotation_id)


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
    correction: it supersedes the first.

    Before the writes: one statement that reads the image with its current answers, the caller's lease,
    Idempotency-Key match and the team size (on PostgreSQL after a statement that locks the image, so a concurrent
    submission for the image is seen), and a live-lease count only when the caller holds no lease."""
    check_kind(project, label=label, boxes=boxes)
    label = check_label(project, label) if label is not None else None
    request_hash = _request_hash(image_id, label=label, boxes=boxes, duration_ms=duration_ms)
    if duration_ms is not None and not 0 <= duration_ms <= MAX_DURATION_MS:
        raise InvalidInput(f"duration_ms must be between 0 and {MAX_DURATION_MS}", code="invalid_duration")
    # Locking the image row serializes submissions for one image on PostgreSQL (SQLite serializes all writers), so
    # a retry racing its original waits here and then finds it under its Idempotency-Key.
    situation = _situation(
        session, project=project, image_id=image_id, annotator_id=principal.id, key=idempotency_key, now=utcnow()
    )
    image = situation.image
    if situation.earlier_id is not None:
        if situation.earlier_hash != request_hash:
            raise _key_reused(str(idempotency_key))
        return Submitted(
            session.get_one(Annotation, situation.earlier_id), replayed=True, other_lease=situation.other_lease
        )
    stored_boxes = check_boxes(project, image, boxes) if boxes is not None else None
    now = utcnow()  # after the image's lock, which a concurrent submission may have held a while
    previous = situation.answers.get(principal.id)
    if previous is None:
        holds_lease = situation.lease_status is AssignmentStatus.leased and (
            situation.lease_expires_at is not None and situation.lease_expires_at > now
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
    if previous is None:
        image.label_count += 1
    counted = {a: answer.value for a, answer in situation.answers.items() if not answer.excluded and a != principal.id}
    if not situation.me_excluded:
        counted[principal.id] = stored_boxes if stored_boxes is not None else label
    # A settings change that committed after the access statement read them has re-marked the project's weak images
    # already, this one as it was: its new consensus is judged under the settings as they are now.
    settings = project_settings(project)
    if situation.settings != project.settings:
        settings = ProjectSettings.model_validate(situation.settings)
    apply_answers(
        session,
        project=project,
        image=image,
        answers=counted,
        annotators=situation.annotators,
        fit=situation.fit,
        settings=settings,
    )
    row = {
        "project_id": project.id,
        "image_id": image.id,
        "annotator_id": principal.id,
        "label": label,
        "boxes": stored_boxes,
        "duration_ms": duration_ms,
        "origin": AnnotationOrigin.human,
        "is_current": True,
        "supersedes_id": previous.id if previous else None,
        "gold_correct": gold_correct(image, label=label, boxes=stored_boxes),
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
        "created_at": now,
    }
    try:  # Core writes: no unit of work to run for four rows
        annotation_id = _write(session.connection(), row=row, assignment_id=situation.assignment_id, image=image)
    except IntegrityError:
        # The same Idempotency-Key with another image, in parallel (a retry of the same request waits on the image
        # lock above instead): the transaction is spoilt, so start over and answer as a replay would.
        session.rollback()
        if idempotency_key:
            earlier = _replay(session, annotator_id=principal.id, key=idempotency_key, request_hash=request_hash)
            if earlier is not None:
                return Submitted(earlier, replayed=True)
        raise Conflict(
            f"your answer for image {image_id} clashed with one stored at the same moment; nothing of this request "
            "was stored: send it again",
            code="concurrent_submission",
        ) from None
    # Transient, as the ORM would load it (``from_columns``): the caller reads it; nothing writes it again.
    stored = Annotation.from_columns([annotation_id, *(row[name] for name in _ANSWER_COLUMNS)])
    return Submitted(stored, replayed=False, other_lease=situation.other_lease)


def lease_next_after(session: Session, *, submitted: Submitted, principal: Principal, project: Project) -> Task | None:
    """The annotator's next task, right after ``submitted``, in the same transaction (one round trip per label).

    The transaction must have begun by locking the annotator's user row (``authenticate_member`` with ``lock_user``):
    then the situation ``submit_annotation`` read says whether they hold another lease, and no look is needed when
    they hold none. On PostgreSQL the locks come in one order, so the answer and the lease can share the transaction
    without deadlocks: the user row (waiting, holding nothing), the answered image (waiting, holding only the user
    row: one annotator's requests take turns, so no request holding this image waits for that row), then an image to
    lease, open or gold (SKIP LOCKED: never waiting for one another transaction holds). The project row is locked
    only FOR NO KEY UPDATE (``take_turns_on_project``), so the inserts' foreign-key checks do not wait for it either.

    Should every open image be locked by others (their transactions are leasing them, and one of them may be waiting
    for the image this one answered), the answer is committed first, letting that image go, and the look starts over
    as ``GET tasks/next`` does, pausing for the others (the answer stays stored should that fail; a retry replays
    it)."""
    try:
        return next_task(session, principal=principal, project=project, other_lease=submitted.other_lease, wait=False)
    except OpenImagesLocked:
        session.commit()
        return next_task(session, principal=principal, project=project)


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
    mark_reports_outdated(session, project_id=project.id)  # no new label id tells them
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
