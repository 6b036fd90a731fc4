"""SQLAlchemy 2.0 typed models: the tables every other package reads and writes.

Relationships are ``lazy="raise"`` so an accidental N+1 query fails loudly in tests.
Schema changes go through a new Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Self

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
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column, relationship
from sqlalchemy.orm.instrumentation import manager_of_class
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

    @classmethod
    def columns(cls) -> tuple[Any, ...]:
        """Every column of the table, in order: what a Core select reads for ``from_columns``."""
        return tuple(cls.__table__.c)

    @classmethod
    def from_columns(cls, values: Sequence[Any]) -> Self:
        """An object from the values of ``columns()``, made as the ORM's loader makes one, without a session.

        The labeling path reads rows with prebuilt Core statements and writes its changes with its own statements:
        an ORM load costs it several times a Core row. The object is transient: changing it writes nothing.
        """
        names = _attribute_names(cls)
        instance: Self = manager_of_class(cls).new_instance()
        instance.__dict__.update(zip(names, values, strict=True))
        return instance


def _attribute_names(cls: type[Base]) -> tuple[str, ...]:
    names = _ATTRIBUTE_NAMES.get(cls)
    if names is None:
        configure_mappers()  # what a first ORM query would do
        mapper = cls.__mapper__
        names = _ATTRIBUTE_NAMES[cls] = tuple(mapper.get_property_by_column(c).key for c in cls.__table__.c)
    return names


_ATTRIBUTE_NAMES: dict[type[Base], tuple[str, ...]] = {}


class CreatedAt:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now())


def _boxes() -> JSON:
    # A missing answer is SQL NULL, never JSON null, so that "IS NULL" means "no boxes given" and [] means "none here".
    return JSON(none_as_null=True)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable, readable in SQL, easy to extend.
    return Enum(cls, name=name, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Role(enum.StrEnum):
    admin = "admin"
    engineer = "engineer"
    annotator = "annotator"


class TaskType(enum.StrEnum):
    classification = "classification"  # one label per image
    detection = "detection"  # boxes, each with one of the project's labels


class Split(enum.StrEnum):
    train = "train"
    test = "test"


class ImageSource(enum.StrEnum):
    upload = "upload"
    zip = "zip"
    folder = "folder"
    label_studio = "label_studio"
    production = "production"  # captured from /predict traffic (project setting monitoring.capture)


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


# User names are unique ignoring case (``ADMIN`` cannot stand beside ``admin``); they are ASCII, so lower()
# means the same on SQLite and PostgreSQL.
Index("uq_users_lower_name", func.lower(User.name), unique=True)


class Project(CreatedAt, Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task_type: Mapped[TaskType] = mapped_column(_enum(TaskType, "task_type"), default=TaskType.classification)
    labels: Mapped[list[str]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ProjectCount(Base):
    """A change to one of a project's console figures, inserted by database triggers (migration 0016) in the
    transaction of every row change it counts, so the counts never drift; a figure's item is the sum of its rows,
    which the worker's upkeep folds into one (``storage.projects.compact_counts``), so the console reads a few rows
    at any size.

    ``figure`` and its ``item``: ``images`` by ``state:split`` (state: unlabeled, overlap, review, done), ``class``
    by ``split:label`` (images by current label; boxes by class in a detection project), ``day`` by UTC date
    (answers submitted, corrections included), ``annotator`` by user id (current answers). Written by code only when
    folded.
    """

    __tablename__ = "project_counts"
    __table_args__ = (Index("ix_project_counts_figure", "project_id", "figure", "item", "count"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    figure: Mapped[str] = mapped_column(String(16))
    item: Mapped[str] = mapped_column(String(120))
    count: Mapped[int] = mapped_column(Integer)


class Membership(CreatedAt, Base):
    __tablename__ = "memberships"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)

    user: Mapped[User] = relationship(lazy="raise")

    __table_args__ = (Index("ix_memberships_user_id", "user_id"),)


def upright_size(width: int, height: int, exif_orientation: int | None) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied: ``width`` and ``height`` are the stored pixels', and
    orientations 5 to 8 turn the image a quarter."""
    return (height, width) if exif_orientation in (5, 6, 7, 8) else (width, height)


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
    # Detection projects: the known boxes of a gold image, and the image's current boxes ([] is "no objects").
    # Lists of {label, x, y, w, h} in pixels of the upright image, as annotation.box_answers stores them.
    gold_boxes: Mapped[list[dict[str, Any]] | None] = mapped_column(_boxes())
    consensus_boxes: Mapped[list[dict[str, Any]] | None] = mapped_column(_boxes())
    # A labeled image without a gold answer whose consensus is weak (no label, a tie, a posterior under the project's
    # review_posterior; a weak box consensus): set wherever consensus is written, for the weak list's index.
    consensus_weak: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Tasks served on the image (its assignment rows, any status), kept by triggers on assignments (migration 0016):
    # only a waiting image served at least as often as the team is large can have been served to everyone.
    assignment_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        UniqueConstraint("project_id", "sha256", name="uq_images_project_id_sha256"),
        Index("ix_images_project_id_id", "project_id", "id"),
        Index("ix_images_queue", "project_id", "queue_tier", "priority", "id"),
        Index("ix_images_gold", "project_id", "gold_label"),
        # Covering indexes for counts by queue state and split, and by current label and split.
        Index("ix_images_states", "project_id", "queue_tier", "split", "label_count"),
        Index("ix_images_consensus", "project_id", "consensus_label", "split"),
        Index(
            "ix_images_weak",
            "project_id",
            "id",
            # Each dialect's form of what ``weak_consensus`` asks (SQLite stores booleans as 0 and 1).
            sqlite_where=text("consensus_weak = 1 AND queue_tier IS NULL"),
            postgresql_where=text("consensus_weak AND queue_tier IS NULL"),
        ),
        Index(
            "ix_images_served",
            "project_id",
            "assignment_count",
            postgresql_where=text("queue_tier IS NOT NULL"),
            sqlite_where=text("queue_tier IS NOT NULL"),
        ),
    )

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied (``upright_size``)."""
        return upright_size(self.width, self.height, self.exif_orientation)

    @property
    def is_gold(self) -> bool:
        """A gold question, in either kind of project."""
        return self.gold_label is not None or self.gold_boxes is not None


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
        # A project's live leases and served tasks, for why its waiting images wait (annotation.queue).
        Index("ix_assignments_project_status", "project_id", "status", "expires_at"),
    )


class Annotation(CreatedAt, Base):
    """One answer given by one annotator. Append-only: a correction is a new row superseding the old.

    A classification answer is a ``label``; a detection answer is ``boxes`` (``label`` NULL), a list of
    {label, x, y, w, h} in pixels of the upright image (EXIF orientation applied), floats, clipped to the image.
    """

    __tablename__ = "annotations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    label: Mapped[str | None] = mapped_column(String(100))
    boxes: Mapped[list[dict[str, Any]] | None] = mapped_column(_boxes())
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
        Index("ix_annotations_current", "project_id", "is_current", "annotator_id"),
        Index("ix_annotations_created", "project_id", "created_at"),
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


class QualityReport(Base):
    """A stored quality report (``agreement`` or ``annotators``) in the API's shape: Dawid-Skene, kappas and alpha
    take seconds on a large project, so a job computes them and the Quality page reads the result."""

    __tablename__ = "quality_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    labels: Mapped[int] = mapped_column(Integer)  # current labels when computed
    labels_through: Mapped[int] = mapped_column(Integer)  # the newest annotation id it saw
    # Set when something it reads changed without a new label (gold answer, consensus refit); cleared by a recompute.
    outdated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))

    __table_args__ = (UniqueConstraint("project_id", "kind", name="uq_quality_reports_project_id_kind"),)


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
    # Detection only: the kind (overlooked, swap, badloc), the box it is about ({x, y, w, h} in upright pixels)
    # and each kind's score for the image.
    issue_type: Mapped[str | None] = mapped_column(String(20))
    box: Mapped[dict[str, float] | None] = mapped_column(JSON)
    type_scores: Mapped[dict[str, float] | None] = mapped_column(JSON)
    sent_for_review_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("project_id", "image_id", name="uq_label_issues_project_id_image_id"),
        Index("ix_label_issues_project_id_rank", "project_id", "rank"),
    )


class Prediction(CreatedAt, Base):
    """A model's answer for one image; the newest one is the pre-label annotators see.

    Mining stores one per (model, image) with the summary of its probabilities that the strategies rank by.
    """

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(100))
    confidence: Mapped[float] = mapped_column(Float)  # the top probability
    # Set by mining (NULL for predictions from elsewhere): the model that scored the image, the top
    # probability minus the second, and the entropy of the probabilities in nats.
    model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    margin: Mapped[float | None] = mapped_column(Float)
    entropy: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_predictions_image_id_id", "image_id", "id"),
        UniqueConstraint("model_id", "image_id", name="uq_predictions_model_id_image_id"),
    )


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class JobKind(enum.StrEnum):
    train = "train"  # full training on a fresh snapshot, evaluation, promotion decision
    refresh = "refresh"  # refit the champion's head on cached embeddings (a detector's heads: fine-tuned)
    embed = "embed"  # cache every image's embedding from the champion's backbone
    label_quality = "label_quality"
    mine = "mine"
    export = "export"  # the ONNX file of a refreshed model, made after it already serves
    drift = "drift"  # compare a window of logged predictions with the champion's training images
    distill = "distill"  # train a small student on the champion's soft labels
    quantize = "quantize"  # an int8 ONNX file of a model
    quality_report = "quality_report"  # agreement figures and annotator scorecards, stored for the console


class Job(CreatedAt, Base):
    """A unit of background work. The row is the truth about a job, whatever queue carries it."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.queued)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(500), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(2000))
    traceback: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # host:pid of the worker running it, so a restarted worker can tell its dead predecessor's jobs.
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (Index("ix_jobs_project_kind_status", "project_id", "kind", "status"),)


class DatasetSnapshot(CreatedAt, Base):
    """An immutable list of (image, label, split): its content is a blob named by its own sha256."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    content_sha256: Mapped[str] = mapped_column(String(64))
    item_count: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)  # counts per split and class

    __table_args__ = (UniqueConstraint("project_id", "content_sha256", name="uq_dataset_snapshots_project_content"),)


class ModelKind(enum.StrEnum):
    full = "full"  # the whole network trained on a snapshot
    refresh = "refresh"  # the parent's backbone with a head refitted on cached embeddings (or a detector's heads)


class ModelStatus(enum.StrEnum):
    training = "training"
    candidate = "candidate"  # trained and evaluated, not promoted
    champion = "champion"  # the project's production model; at most one
    retired = "retired"  # was champion once
    failed = "failed"


class ModelVersion(CreatedAt, Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # The job that made it: a retried job finds its model again instead of making a second one.
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), unique=True)
    snapshot_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_snapshots.id", ondelete="RESTRICT"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    kind: Mapped[ModelKind] = mapped_column(_enum(ModelKind, "model_kind"))
    status: Mapped[ModelStatus] = mapped_column(_enum(ModelStatus, "model_status"), default=ModelStatus.training)
    architecture: Mapped[str] = mapped_column(String(50))
    input_size: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list[str]] = mapped_column(JSON)  # class order of the outputs
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))  # a PyTorch checkpoint of the whole network
    onnx_sha256: Mapped[str | None] = mapped_column(String(64))  # outputs: logits and the embedding
    head_sha256: Mapped[str | None] = mapped_column(String(64))  # the final layer as .npz: embedding -> logits
    # For refresh models: the newest annotation id their labels include, to know when to refresh again.
    labels_through: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    promoted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # A refreshed head that stopped serving loses its files after a grace period; its row stays for lineage.
    files_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # After deployment: "shadow" (predicts on a copy of live traffic, never answers) or "canary" (answers
    # ``traffic_share`` of the requests); NULL for neither.
    deployment: Mapped[str | None] = mapped_column(String(16))
    traffic_share: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_model_versions_project_id_id", "project_id", "id"),
        Index(
            "uq_model_versions_one_champion",
            "project_id",
            unique=True,
            sqlite_where=text("status = 'champion'"),
            postgresql_where=text("status = 'champion'"),
        ),
    )


class Embedding(Base):
    """An image's feature vector from a full model's backbone (float32 bytes): the fast refresh reads these."""

    __tablename__ = "embeddings"

    model_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Schedule(CreatedAt, Base):
    """A project's timetable for one kind of job: a cron expression (UTC) and when it is next due.

    Only the next due time is kept, not the missed slots: a service that was down runs the job once.
    """

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"))
    cron: Mapped[str] = mapped_column(String(100))
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("project_id", "kind", name="uq_schedules_project_id_kind"),
        Index("ix_schedules_next_run_at", "next_run_at"),
    )


class WorkerLane(Base):
    """One lane of one ``labelwheel worker`` as its supervisor last saw it: what ``/health`` reads.

    The supervisor rewrites its rows every few seconds; a row whose heartbeat stopped belongs to a worker that
    died (a cleanly stopped worker deletes its rows).
    """

    __tablename__ = "worker_lanes"

    supervisor: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid of `labelwheel worker`
    lane: Mapped[str] = mapped_column(String(32), primary_key=True)
    # host:pid of the lane process (as in jobs.worker); None while the lane is down.
    worker: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    last_exit: Mapped[str | None] = mapped_column(String(500))
    last_exit_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PredictionLog(Base):
    """One ``/predict`` answer, kept ``monitoring.log_days``: what the drift job compares with the training images,
    and the trace of what production saw. ``embedding`` comes from ``backbone_id``'s backbone (float32 bytes)."""

    __tablename__ = "prediction_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    backbone_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    input_sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(100))
    confidence: Mapped[float | None] = mapped_column(Float)
    boxes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    latency_ms: Mapped[float] = mapped_column(Float)  # the request's model time, shared by its images
    request_id: Mapped[str] = mapped_column(String(32))  # pairs a shadow's answer with the one sent
    role: Mapped[str] = mapped_column(String(16), default="served")  # served (sent back) or shadow (logged only)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The pool image with these bytes: captured by this answer, or in the project already.
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))

    __table_args__ = (
        Index("ix_prediction_logs_project_id_id", "project_id", "id"),
        Index("ix_prediction_logs_project_id_created_at", "project_id", "created_at"),
    )


class DriftPoint(Base):
    """One window of logged predictions compared with the champion's training images: a point of the drift
    series (``GET .../drift``)."""

    __tablename__ = "drift_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    champion_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    predictions: Mapped[int] = mapped_column(Integer)
    reference: Mapped[int] = mapped_column(Integer)  # training images compared with
    status: Mapped[str] = mapped_column(String(16))  # ok or drift
    domain_auc: Mapped[float] = mapped_column(Float)
    mmd: Mapped[float] = mapped_column(Float)
    mmd_p: Mapped[float] = mapped_column(Float)
    label_chi2_p: Mapped[float | None] = mapped_column(Float)
    # The most drifted inputs: [{log_id, input_sha256, image_id, score}], by the domain classifier's score.
    most_drifted: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)

    __table_args__ = (Index("ix_drift_points_project_id_id", "project_id", "id"),)


class LabelStudioLink(CreatedAt, Base):
    """A project served to a Label Studio project as its ML backend (``flywheel.labelstudio``).

    Images are fetched only from ``url``; Label Studio calls the backend with HTTP basic auth whose password is a
    per-project secret, stored as its sha256 like API tokens.
    """

    __tablename__ = "labelstudio_links"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(String(500))  # scheme://host[:port], nothing else
    # Label Studio's API token: sent back to Label Studio to read task images and push predictions.
    access_token: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    ls_project_id: Mapped[int | None] = mapped_column(Integer)
    pushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LabelStudioTask(Base):
    """A Label Studio task whose image was fetched: the image it is, so it is never fetched twice, and the score
    last pushed to Label Studio with a prediction, so only changed priorities are pushed again."""

    __tablename__ = "labelstudio_tasks"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    ls_task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reference: Mapped[str] = mapped_column(String(2000))  # data.image as Label Studio sent it
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    pushed_score: Mapped[float | None] = mapped_column(Float)
    pushed_model: Mapped[str | None] = mapped_column(String(100))

    __table_args__ = (Index("ix_labelstudio_tasks_image_id", "image_id"),)


class LabelStudioAnnotation(Base):
    """A Label Studio annotation stored through a webhook: whose answer on which image, so that its deletion
    (``ANNOTATIONS_DELETED`` carries only ids) withdraws the right one."""

    __tablename__ = "labelstudio_annotations"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    ls_annotation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
