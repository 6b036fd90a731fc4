"""SQLAlchemy 2.0 typed models: the tables every other package reads and writes.

Relationships are ``lazy="raise"`` so an accidental N+1 query fails loudly in tests.
Schema changes go through a new Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite stores no zone and returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CreatedAt:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable, readable in SQL, easy to extend.
    return Enum(cls, name=name, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Role(enum.StrEnum):
    admin = "admin"
    engineer = "engineer"
    annotator = "annotator"


class TaskType(enum.StrEnum):
    classification = "classification"


class Split(enum.StrEnum):
    train = "train"
    test = "test"


class ImageSource(enum.StrEnum):
    upload = "upload"
    zip = "zip"
    folder = "folder"
    label_studio = "label_studio"


class QueueTier(enum.IntEnum):
    """Where an image waits in the labeling queue; higher tiers are served first. NULL: not waiting.

    The queue is read as one backward scan of (project_id, queue_tier, priority, id), so every
    ordering column runs the same direction: higher tier, then higher priority, then newer id.
    """

    fresh = 0  # not labeled yet
    review = 1  # sent back for another look, with a reason
    overlap = 2  # labeled by some, still needs more independent labels


class AssignmentStatus(enum.StrEnum):
    leased = "leased"
    submitted = "submitted"
    skipped = "skipped"


class AnnotationOrigin(enum.StrEnum):
    human = "human"
    imported = "imported"


class User(CreatedAt, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    # sha256 of the random token: tokens carry 256 bits of entropy, so no salt or slow hash is needed,
    # and the hash can be looked up through a unique index.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)


class Project(CreatedAt, Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task_type: Mapped[TaskType] = mapped_column(_enum(TaskType, "task_type"), default=TaskType.classification)
    labels: Mapped[list[str]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Membership(CreatedAt, Base):
    __tablename__ = "memberships"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)

    user: Mapped[User] = relationship(lazy="raise")

    __table_args__ = (Index("ix_memberships_user_id", "user_id"),)


class Image(CreatedAt, Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # The blob key: images are content-addressed, so the same bytes are stored once per blob store.
    sha256: Mapped[str] = mapped_column(String(64))
    thumbnail_sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    byte_size: Mapped[int] = mapped_column(BigInteger)
    exif_orientation: Mapped[int | None] = mapped_column(Integer)
    split: Mapped[Split] = mapped_column(_enum(Split, "split"))
    source: Mapped[ImageSource] = mapped_column(_enum(ImageSource, "image_source"))
    original_name: Mapped[str] = mapped_column(String(1024))

    # The labeling queue, kept up to date on every submission so that serving a task is an index
    # range scan, never a scan of all images or annotations.
    labels_needed: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    label_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queue_tier: Mapped[int | None] = mapped_column(Integer, default=int(QueueTier.fresh))
    priority: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    review_reason: Mapped[str | None] = mapped_column(String(500))
    gold_label: Mapped[str | None] = mapped_column(String(100))
    # The current label training reads: the gold answer for gold images, otherwise Dawid-Skene's most
    # probable label given the project's last fit, or the majority vote while there is no fit.
    consensus_label: Mapped[str | None] = mapped_column(String(100))
    consensus_tie: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Dawid-Skene's probability that consensus_label is right (1 for gold); NULL under majority vote.
    consensus_posterior: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("project_id", "sha256", name="uq_images_project_id_sha256"),
        Index("ix_images_project_id_id", "project_id", "id"),
        Index("ix_images_queue", "project_id", "queue_tier", "priority", "id"),
        Index("ix_images_gold", "project_id", "gold_label"),
    )


class Assignment(Base):
    """A task served to an annotator: a lease until ``expires_at``, then submitted or skipped.

    One row per (image, annotator): an annotator is never served the same image twice.
    """

    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[AssignmentStatus] = mapped_column(_enum(AssignmentStatus, "assignment_status"))
    # When the task was served; NULL for a label submitted without a lease. Annotator speed reads it.
    leased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("image_id", "annotator_id", name="uq_assignments_image_id_annotator_id"),
        Index("ix_assignments_annotator_status", "annotator_id", "project_id", "status", "expires_at"),
    )


class Annotation(CreatedAt, Base):
    """One label given by one annotator. Append-only: a correction is a new row superseding the old."""

    __tablename__ = "annotations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(100))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    origin: Mapped[AnnotationOrigin] = mapped_column(_enum(AnnotationOrigin, "annotation_origin"))
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    # Set only for gold questions: whether the answer matched the known one.
    gold_correct: Mapped[bool | None] = mapped_column(Boolean)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_annotations_project_id_id", "project_id", "id"),
        Index("ix_annotations_image_id", "image_id", "is_current"),
        Index("ix_annotations_annotator", "annotator_id", "project_id"),
        UniqueConstraint("annotator_id", "idempotency_key", name="uq_annotations_annotator_id_idempotency_key"),
    )


class AnnotatorExclusion(CreatedAt, Base):
    """An admin's decision to leave one annotator's labels out of consensus; revoking it keeps the row."""

    __tablename__ = "annotator_exclusions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(500))
    excluded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (Index("ix_annotator_exclusions_project_annotator", "project_id", "annotator_id"),)


class ConsensusFit(Base):
    """The project's last Dawid-Skene fit: class priors, read with ``AnnotatorSkill`` rows on every submission."""

    __tablename__ = "consensus_fits"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    priors: Mapped[list[float]] = mapped_column(JSON)  # in the project's label order
    # For annotators the fit has not seen yet: the crowd's pooled accuracy, errors spread evenly.
    default_accuracy: Mapped[float] = mapped_column(Float)
    images: Mapped[int] = mapped_column(Integer)
    overlapped_images: Mapped[int] = mapped_column(Integer)
    iterations: Mapped[int] = mapped_column(Integer)
    fitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AnnotatorSkill(Base):
    """One annotator's confusion matrix from the project's last Dawid-Skene fit."""

    __tablename__ = "annotator_skills"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    accuracy: Mapped[float] = mapped_column(Float)
    # confusion[k][l]: probability of answering label l when the true label is k (label-set order).
    confusion: Mapped[list[list[float]]] = mapped_column(JSON)
    labels: Mapped[int] = mapped_column(Integer)


class LabelIssue(CreatedAt, Base):
    """A label a cross-validated model finds likely wrong; a ``label_quality`` job replaces the project's list."""

    __tablename__ = "label_issues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    rank: Mapped[int] = mapped_column(Integer)  # 1 is the most likely wrong
    given_label: Mapped[str] = mapped_column(String(100))
    suggested_label: Mapped[str] = mapped_column(String(100))
    # cleanlab's label quality score in [0, 1]: low means the given label is likely wrong.
    score: Mapped[float] = mapped_column(Float)
    sent_for_review_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("project_id", "image_id", name="uq_label_issues_project_id_image_id"),
        Index("ix_label_issues_project_id_rank", "project_id", "rank"),
    )


class Prediction(CreatedAt, Base):
    """A model's answer for one image; the newest one is the pre-label annotators see."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(100))
    confidence: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_predictions_image_id_id", "image_id", "id"),)
