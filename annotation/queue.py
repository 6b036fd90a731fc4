"""The labeling queue: which image an annotator gets next, leases, skips and the queue's order.

An image waits in ``images.queue_tier`` until it has all the labels it needs; serving a task is one
backward index scan over (project_id, queue_tier, priority, id) that stops at the first image this
annotator may take, so its cost does not grow with the pool. Leases are rows in ``assignments``;
one that has expired simply stops counting, which is how it returns to the pool.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Insert, Select, all_, and_, bindparam, case, func, insert, select, true, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from storage.driver_sql import DriverStatement
from storage.errors import Conflict
from storage.models import (
    Assignment,
    AssignmentStatus,
    Image,
    Membership,
    ModelStatus,
    ModelVersion,
    Prediction,
    Project,
    QueueTier,
    Role,
    TaskType,
    User,
    utcnow,
)
from storage.projects import add_member, project_counts, remove_member
from storage.users import Principal


@dataclass(frozen=True)
class PreLabel:
    label: str
    confidence: float
    model_version: str
    fallback: str | None = None  # why the serving model did not give it, when an older one did


@dataclass(frozen=True)
class PreLabelSource:
    """Where a task's pre-label comes from, read in the transaction that leased it: a model, whose answer is worked
    out after the commit (inference holds no lock), or else the newest stored prediction, here already."""

    model: bool
    stored: PreLabel | None


def source_columns(project_id: Any, image_id: Any) -> tuple[Any, ...]:
    """What ``source_of`` reads: whether a champion serves the project, and the image's newest stored prediction."""

    def newest(column: Any) -> Any:
        return (
            select(column)
            .where(Prediction.image_id == image_id)
            .order_by(Prediction.id.desc())
            .limit(1)
            .scalar_subquery()
        )

    champion = select(ModelVersion.id).where(
        ModelVersion.project_id == project_id, ModelVersion.status == ModelStatus.champion
    )
    return (
        champion.exists(),
        newest(Prediction.label),
        newest(Prediction.confidence),
        newest(Prediction.model_version),
    )


def source_of(values: Sequence[Any]) -> PreLabelSource:
    model, label, confidence, version = values
    return PreLabelSource(bool(model), None if label is None else PreLabel(label, confidence, version))


@dataclass(frozen=True)
class Task:
    image: Image  # transient (``Image.from_columns``): for reading
    lease_expires_at: datetime
    review_reason: str | None
    # Read with the lease when the task came from the open queue (the usual case): one statement fewer. None: ask
    # ``flywheel.serving.prelabels.prelabel_source``.
    prelabel_source: PreLabelSource | None = None


def annotator_members(session: Session, *, project_id: int) -> int:
    """How many of the project's members are annotators: the most distinct labels the queue asks for."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Membership)
            .join(User, User.id == Membership.user_id)
            .where(Membership.project_id == project_id, User.role == Role.annotator)
        )
        or 0
    )


def labels_wanted(image: Image, *, annotators: int) -> int:
    """The labels an image waits for: what overlap or review asked for, but never more than the project has
    annotator members (a project without any, labeled by its admins and engineers, is not capped)."""
    return min(image.labels_needed, annotators) if annotators else image.labels_needed


def place_in_queue(image: Image, *, annotators: int) -> None:
    """Set the image's tier from its label counts; an image with all the labels it can get leaves the queue.

    One that wanted more than the team can give keeps its review reason, for when a new annotator joins.
    """
    if image.is_gold or image.label_count >= image.labels_needed:
        image.queue_tier = None
        image.review_reason = None
    elif image.label_count >= labels_wanted(image, annotators=annotators):
        image.queue_tier = None
    elif image.review_reason is not None:
        image.queue_tier = QueueTier.review
    elif image.label_count > 0:
        image.queue_tier = QueueTier.overlap
    else:
        image.queue_tier = QueueTier.fresh


def _live_leases(session: Session, *, image_id: int, now: datetime, exclude: int) -> int:
    """Leases other annotators hold on the image right now."""
    row = _LIVE_LEASES.first(session.connection(), {"image_id": image_id, "now": now, "exclude": exclude})
    return row[0] if row else 0


_LIVE_LEASES = DriverStatement(  # compiled once: it runs whenever a capacity is checked
    select(func.count()).where(
        Assignment.image_id == bindparam("image_id"),
        Assignment.annotator_id != bindparam("exclude"),
        Assignment.status == AssignmentStatus.leased,
        Assignment.expires_at > bindparam("now", type_=Assignment.expires_at.type),
    )
)


def _open_query() -> Select[Any]:
    """Waiting images this annotator has never been served and that have room for one more label, each row the
    image's columns then its ``source_columns``.

    One statement in serving order: a backward scan of ix_images_queue that probes the assignments
    index for each image it passes, so it stops at the first match without reading the pool.
    Parameters: project_id, annotator_id, now.
    """
    annotator_id: BindParameter[int] = bindparam("annotator_id")
    now: BindParameter[datetime] = bindparam("now", type_=Assignment.expires_at.type)
    seen = (
        select(Assignment.id).where(Assignment.image_id == Image.id, Assignment.annotator_id == annotator_id).exists()
    )
    live_leases = (
        select(func.count())
        .where(
            Assignment.image_id == Image.id,
            Assignment.status == AssignmentStatus.leased,
            Assignment.expires_at > now,
        )
        .scalar_subquery()
    )
    return (
        select(*Image.columns(), *source_columns(Image.project_id, Image.id))
        .where(
            Image.project_id == bindparam("project_id"),
            Image.queue_tier.is_not(None),
            ~seen,
            Image.label_count + live_leases < Image.labels_needed,
        )
        .order_by(Image.queue_tier.desc(), Image.priority.desc(), Image.id.desc())
        .limit(1)
    )


# Built once: it runs on every task served. Core rows, not ORM loads (``Image.from_columns``): a few times cheaper.
_OPEN = _open_query()
_OPEN_LOCKED = _OPEN.with_for_update(skip_locked=True)
_FIRST_OPEN = DriverStatement(_OPEN_LOCKED)  # the usual case: no candidate passed over
# PostgreSQL (only there is a candidate passed over, see _lease_first_open): the next, past those in ``passed``, an
# array (one compiled statement however many there are, where NOT IN would be compiled for each count).
_NOT_PASSED = Image.id != all_(bindparam("passed", type_=postgresql.ARRAY(Image.id.type)))
_NEXT_OPEN = DriverStatement(_OPEN_LOCKED.where(_NOT_PASSED))
_IMAGE_WIDTH = len(Image.columns())  # an open row's image columns, before its pre-label source


def _gold_candidate(session: Session, *, project: Project, annotator_id: int) -> Image | None:
    seen = select(Assignment.image_id).where(
        Assignment.annotator_id == annotator_id, Assignment.project_id == project.id
    )
    # Each kind of project keeps its gold answers in its own column (gold_label is indexed for classification).
    gold = Image.gold_boxes if project.task_type is TaskType.detection else Image.gold_label
    # SKIP LOCKED (PostgreSQL): the lease below writes the image (its foreign-key check, the assignment count's
    # trigger), and a round trip holding the image it answered must not wait for one another transaction holds.
    return session.scalar(
        select(Image)
        .where(Image.project_id == project.id, gold.is_not(None), Image.id.not_in(seen))
        .order_by(Image.priority.desc(), Image.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def stored_prelabel(session: Session, *, image_id: int) -> PreLabel | None:
    """The newest stored prediction for the image, as a pre-label (it may come from an older model)."""
    prediction = _NEWEST_PREDICTION.first(session.connection(), {"image_id": image_id})
    return None if prediction is None else PreLabel(*prediction)


_NEWEST_PREDICTION = DriverStatement(  # compiled once: it runs whenever the serving model gives no pre-label
    select(Prediction.label, Prediction.confidence, Prediction.model_version)
    .where(Prediction.image_id == bindparam("image_id"))
    .order_by(Prediction.id.desc())
    .limit(1)
)


def _held_query() -> Select[Any]:
    """The live lease the annotator holds in the project, with its image's columns."""
    return (
        select(Assignment.expires_at, *Image.columns())
        .join(Image, Image.id == Assignment.image_id)
        .where(
            Assignment.annotator_id == bindparam("annotator_id"),
            Assignment.project_id == bindparam("project_id"),
            Assignment.status == AssignmentStatus.leased,
            Assignment.expires_at > bindparam("now", type_=Assignment.expires_at.type),
        )
        .limit(1)
    )


# FOR NO KEY UPDATE: it does not block the foreign-key checks (FOR KEY SHARE) of inserts naming this user. A statement
# of its own: one that also read the leases would, having waited for the lock, still read them as they were before.
_LOCK_USER = DriverStatement(
    select(User.id).where(User.id == bindparam("annotator_id")).with_for_update(key_share=True)
)
_HELD = DriverStatement(_held_query())  # compiled once: it runs on every task served


class OpenImagesLocked(Exception):
    """Every open image the annotator could be given is locked by other transactions (PostgreSQL), and the caller
    asked not to wait for them (``next_task`` with ``wait=False``)."""


LOCKED_RETRIES = 40  # looks again at most this many times while every open candidate is locked by others ...
LOCKED_PAUSE_SECONDS = 0.025  # ... this long apart (about a second in all)


def next_task(
    session: Session,
    *,
    principal: Principal,
    project: Project,
    rng: random.Random | None = None,
    other_lease: bool | None = None,
    wait: bool = True,
) -> Task | None:
    """Lease the most useful image this annotator has not seen; None when nothing is left for them.

    Calling again while a lease is held returns the same task, so a retried request never holds two: on PostgreSQL
    the annotator's user row is locked first, so two requests of one annotator take turns and the second sees the
    first's lease (SQLite runs one writer at a time anyway). ``other_lease``: whether the annotator holds a live lease
    in the project, as this transaction read it once it had locked their user row (``authenticate_member`` with
    ``lock_user``, then ``Submitted.other_lease``): no lock to take then, and no look for a lease when False. None:
    not read, so lock and look here. ``wait=False``: raise ``OpenImagesLocked`` rather than pause while every open
    candidate is locked by others (for a transaction holding an image of its own, which they may be waiting for).
    """
    connection = session.connection()
    if other_lease is None and connection.dialect.name != "sqlite":  # SQLite runs one writer at a time: no lock
        _LOCK_USER.rows(connection, {"annotator_id": principal.id})
    now = utcnow()
    held = (
        None
        if other_lease is False
        else _HELD.first(connection, {"annotator_id": principal.id, "project_id": project.id, "now": now})
    )
    if held is not None:
        image = Image.from_columns(held[1:])
        return Task(image, held[0], image.review_reason)

    lease = timedelta(minutes=project.settings["lease_minutes"])
    chosen: Image | None = None
    source: PreLabelSource | None = None  # read with an open image; a gold question's is asked for afterwards
    if (rng or random).random() < project.settings["gold_rate"]:
        chosen = _gold_candidate(session, project=project, annotator_id=principal.id)
    until = now + lease
    if chosen is not None:
        _LEASE.rows(connection, _lease_row(chosen, annotator_id=principal.id, now=now, until=until))
    elif opened := _lease_first_open(
        session, project_id=project.id, annotator_id=principal.id, now=now, until=until, wait=wait
    ):
        chosen, source = opened
    if chosen is None:
        return None
    return Task(chosen, until, chosen.review_reason, source)


def _lease_first_open(
    session: Session, *, project_id: int, annotator_id: int, now: datetime, until: datetime, wait: bool
) -> tuple[Image, PreLabelSource] | None:
    """Lease the first open image (its row locked for this transaction) until ``until``; the image and where its
    pre-label comes from.

    On PostgreSQL a concurrent request may be leasing the same row: SKIP LOCKED passes over it, and the lease is
    taken only if the image still has room once the row is ours (one statement, ``_LEASE_IF_ROOM``), since the other
    request may have just taken the last place. The rows passed over stay locked until the transaction ends, so this
    never waits for a row lock (waiting while holding some deadlocks with a request doing the same the other way
    round): when every open candidate is locked by others it looks again after a short pause, up to
    ``LOCKED_RETRIES`` times, so an annotator does not get a premature 204 while others' transactions finish (or,
    ``wait=False``, raises ``OpenImagesLocked``). SQLite runs one writer at a time and ignores the locking clauses.
    """
    params = {"project_id": project_id, "annotator_id": annotator_id, "now": now}
    connection = session.connection()
    # SQLite: the one writer's query already counted every lease, so the capacity needs no second look.
    recheck = connection.dialect.name != "sqlite"
    passed: set[int] = set()
    for _ in range(LOCKED_RETRIES + 1):
        while True:
            row = (
                _NEXT_OPEN.first(connection, {**params, "passed": list(passed)})
                if passed
                else _FIRST_OPEN.first(connection, params)
            )
            if row is None:
                break
            image = Image.from_columns(row[:_IMAGE_WIDTH])
            lease = _lease_row(image, annotator_id=annotator_id, now=now, until=until)
            if not recheck:
                _LEASE.rows(connection, lease)
            elif not _LEASE_IF_ROOM.rows(
                connection, {**lease, "label_count": image.label_count, "labels_needed": image.labels_needed}
            ):
                passed.add(image.id)  # another request took the last place meanwhile
                continue
            return image, source_of(row[_IMAGE_WIDTH:])
        unlocked = (_OPEN.where(_NOT_PASSED), {**params, "passed": list(passed)}) if passed else (_OPEN, params)
        if connection.execute(*unlocked).first() is None:  # none open at all, not only locked: none left
            return None
        if not wait:
            raise OpenImagesLocked
        time.sleep(LOCKED_PAUSE_SECONDS)
    return None


def _lease_row(image: Image, *, annotator_id: int, now: datetime, until: datetime) -> dict[str, Any]:
    return {
        "project_id": image.project_id,
        "image_id": image.id,
        "annotator_id": annotator_id,
        "leased_at": now,
        "status": AssignmentStatus.leased,
        "expires_at": until,
        "updated_at": now,
    }


_LEASE = DriverStatement(
    insert(Assignment),
    keys=("project_id", "image_id", "annotator_id", "leased_at", "status", "expires_at", "updated_at"),
)


def _lease_if_room() -> Insert:
    """``_LEASE`` if the image has room for one more annotator now: its label count (read with its row locked, so
    current) plus the live leases of others, counted by this statement, whose snapshot is taken once the row is ours
    (PostgreSQL, READ COMMITTED), below the labels it needs. Returns no row when there is no room."""
    params = {c: bindparam(c, type_=Assignment.__table__.c[c].type) for c in _LEASE.keys or ()}
    others = (
        select(func.count())
        .where(
            Assignment.image_id == params["image_id"],
            Assignment.annotator_id != params["annotator_id"],
            Assignment.status == AssignmentStatus.leased,
            Assignment.expires_at > params["leased_at"],
        )
        .scalar_subquery()
    )
    room = bindparam("label_count", type_=Image.label_count.type) + others < bindparam(
        "labels_needed", type_=Image.labels_needed.type
    )
    return insert(Assignment).from_select(list(params), select(*params.values()).where(room)).returning(Assignment.id)


_LEASE_IF_ROOM = DriverStatement(_lease_if_room())


def skip_task(session: Session, *, principal: Principal, project: Project, image_id: int) -> None:
    """Give the task back: the lease ends now and this annotator is not served the image again."""
    assignment = session.scalar(
        select(Assignment).where(
            Assignment.annotator_id == principal.id,
            Assignment.project_id == project.id,
            Assignment.image_id == image_id,
        )
    )
    if assignment is None or assignment.status is not AssignmentStatus.leased:
        state = "never served to you" if assignment is None else f"already {assignment.status.value}"
        raise Conflict(f"cannot skip image {image_id}: it is {state}; ask for the next task", code="not_leased")
    assignment.status = AssignmentStatus.skipped
    assignment.expires_at = assignment.updated_at = utcnow()
    session.flush()


def add_to_team(session: Session, *, project: Project, user_ids: list[int]) -> list[User]:
    """Make users members of the project (again: no change), then re-place the images a larger team can now give
    more labels: the one way the API and the CLI add members."""
    users = [add_member(session, project=project, user_id=user_id) for user_id in user_ids]
    requeue_for_team(session, project_id=project.id)
    return users


def remove_from_team(session: Session, *, project: Project, user_id: int) -> None:
    """Take a user's access away (their labels stay), then let images that now have every label the remaining
    annotators can give leave the queue."""
    remove_member(session, project=project, user_id=user_id)
    requeue_for_team(session, project_id=project.id)


def requeue_for_team(session: Session, *, project_id: int) -> None:
    """After the project's annotator members changed: images that now have every label they can get leave
    the queue, and images that a larger team can give more labels come back to it."""
    annotators = annotator_members(session, project_id=project_id)
    base = (Image.project_id == project_id, Image.gold_label.is_(None), Image.gold_boxes.is_(None))
    if annotators:
        session.execute(
            update(Image)
            .where(*base, Image.queue_tier.is_not(None), Image.label_count >= annotators)
            .values(queue_tier=None)
        )
    reachable = Image.label_count < annotators if annotators else true()
    session.execute(
        update(Image)
        .where(*base, Image.queue_tier.is_(None), Image.label_count < Image.labels_needed, reachable)
        .values(
            queue_tier=case(
                (Image.review_reason.is_not(None), int(QueueTier.review)),
                (Image.label_count > 0, int(QueueTier.overlap)),
                else_=int(QueueTier.fresh),
            )
        )
    )


def capacity_left(session: Session, *, image: Image, annotator_id: int, now: datetime) -> bool:
    """Whether one more annotator may label the image now (its other leases and labels counted)."""
    return (
        image.label_count + _live_leases(session, image_id=image.id, now=now, exclude=annotator_id)
        < image.labels_needed
    )


@dataclass(frozen=True)
class WaitingReason:
    code: str  # needs_annotator, being_labeled or open
    images: int
    message: str


ORDINALS = ("second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def _images(n: int, verbs: tuple[str, str]) -> str:
    """ "1 image needs", "2 images need"."""
    return f"1 image {verbs[0]}" if n == 1 else f"{n} images {verbs[1]}"


def waiting_reasons(session: Session, *, project_id: int, waiting: int) -> list[WaitingReason]:
    """Why the waiting images wait: every annotator member has been served them (labeled or skipped: only a new
    member can finish them), someone holds a lease on them now, or annotators who have not seen them can take
    them. The first two are why an annotator's queue can be empty while images still wait."""
    if not waiting:
        return []
    now = utcnow()
    live = and_(Assignment.status == AssignmentStatus.leased, Assignment.expires_at > now)
    waiting_images = (Image.project_id == project_id, Image.queue_tier.is_not(None))
    reasons: list[WaitingReason] = []
    annotators = annotator_members(session, project_id=project_id)
    if annotators:
        # Only a waiting image served at least once per annotator member can have been served to all of them: those
        # few are read on ix_images_served, never every waiting image or every task ever served.
        candidates = session.scalars(
            select(Image.id).where(*waiting_images, Image.assignment_count >= annotators)
        ).all()
        per_count: Counter[int] = Counter()
        for start in range(0, len(candidates), 1000):
            served_by_all = (
                select(Image.label_count)
                .join(Assignment, Assignment.image_id == Image.id)
                .join(User, and_(User.id == Assignment.annotator_id, User.role == Role.annotator))
                .join(
                    Membership,
                    and_(Membership.project_id == Image.project_id, Membership.user_id == Assignment.annotator_id),
                )
                .where(Image.id.in_(candidates[start : start + 1000]), ~live)
                .group_by(Image.id, Image.label_count)
                .having(func.count() >= annotators)
            )
            per_count.update(session.scalars(served_by_all))
        stuck = sorted(per_count.items())
        team = f"all {annotators} annotator members" if annotators > 1 else "the project's only annotator member"
        for labels, n in stuck:
            them = "it" if n == 1 else "them"
            if labels:
                nth = ORDINALS[labels - 1] if labels <= len(ORDINALS) else f"{labels + 1}th"
                why = f"a {nth} annotator: {team} labeled or skipped {them}"
            else:
                why = f"an annotator: {team} skipped {them}"
            message = f"{_images(n, ('needs', 'need'))} {why}; add an annotator to the project to finish {them}"
            reasons.append(WaitingReason("needs_annotator", n, message))
    leased = (
        session.scalar(
            select(func.count(func.distinct(Assignment.image_id)))
            .join(Image, Image.id == Assignment.image_id)
            .where(Assignment.project_id == project_id, live, *waiting_images)  # the live leases, on their index
        )
        or 0
    )
    if leased:
        reasons.append(
            WaitingReason("being_labeled", leased, f"{_images(leased, ('is', 'are'))} being labeled right now")
        )
    rest = waiting - sum(r.images for r in reasons)
    if rest > 0:
        them = "it" if rest == 1 else "them"
        message = f"{_images(rest, ('waits', 'wait'))} for annotators who have not been served {them} yet"
        reasons.append(WaitingReason("open", rest, message))
    return reasons


def progress(session: Session, *, project_id: int, annotator_id: int) -> dict[str, Any]:
    states = project_counts(session, project_id=project_id, figure="images")
    total = sum(states.values())
    done = sum(count for item, count in states.items() if item.startswith("done:"))
    waiting = total - done
    mine = session.scalar(
        select(func.count())
        .select_from(Assignment)
        .where(
            Assignment.annotator_id == annotator_id,
            Assignment.project_id == project_id,
            Assignment.status == AssignmentStatus.submitted,
        )
    )
    return {
        "images": total,
        "waiting": waiting,
        "done": done,
        "labeled_by_you": mine or 0,
        "waiting_reasons": waiting_reasons(session, project_id=project_id, waiting=waiting),
    }
