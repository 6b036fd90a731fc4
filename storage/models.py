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
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
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

    __table_args__ = (
        UniqueConstraint("project_id", "sha256", name="uq_images_project_id_sha256"),
        Index("ix_images_project_id_id", "project_id", "id"),
    )
