"""Flywheel: jobs, dataset snapshots, model versions, cached embeddings

Revision ID: 0003_flywheel
Revises: 0002
Create Date: 2026-11-23 01:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_flywheel"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", _enum("job_kind", "train", "refresh", "embed", "label_quality", "mine", "export"), nullable=False),
        sa.Column(
            "status", _enum("job_status", "queued", "running", "succeeded", "failed", "cancelled"), nullable=False
        ),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        _fk("jobs", "project_id", "projects", "CASCADE"),
        _fk("jobs", "created_by", "users", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_project_kind_status", "jobs", ["project_id", "kind", "status"])

    op.create_table(
        "dataset_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        _fk("dataset_snapshots", "project_id", "projects", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_snapshots")),
        sa.UniqueConstraint("project_id", "content_sha256", name="uq_dataset_snapshots_project_content"),
    )

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("snapshot_id", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("kind", _enum("model_kind", "full", "refresh"), nullable=False),
        sa.Column(
            "status", _enum("model_status", "training", "candidate", "champion", "retired", "failed"), nullable=False
        ),
        sa.Column("architecture", sa.String(length=50), nullable=False),
        sa.Column("input_size", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("decision", sa.JSON(), nullable=True),
        sa.Column("weights_sha256", sa.String(length=64), nullable=True),
        sa.Column("onnx_sha256", sa.String(length=64), nullable=True),
        sa.Column("head_sha256", sa.String(length=64), nullable=True),
        sa.Column("labels_through", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        _fk("model_versions", "project_id", "projects", "CASCADE"),
        _fk("model_versions", "job_id", "jobs", "SET NULL"),
        _fk("model_versions", "snapshot_id", "dataset_snapshots", "RESTRICT"),
        _fk("model_versions", "parent_id", "model_versions", "SET NULL"),
        _fk("model_versions", "promoted_by", "users", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("job_id", name=op.f("uq_model_versions_job_id")),
    )
    op.create_index("ix_model_versions_project_id_id", "model_versions", ["project_id", "id"])
    op.create_index(
        "uq_model_versions_one_champion",
        "model_versions",
        ["project_id"],
        unique=True,
        sqlite_where=sa.text("status = 'champion'"),
        postgresql_where=sa.text("status = 'champion'"),
    )

    op.create_table(
        "embeddings",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        _fk("embeddings", "model_id", "model_versions", "CASCADE"),
        _fk("embeddings", "image_id", "images", "CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "image_id", name=op.f("pk_embeddings")),
    )


def downgrade() -> None:
    op.drop_table("embeddings")
    op.drop_index("uq_model_versions_one_champion", "model_versions")
    op.drop_index("ix_model_versions_project_id_id", "model_versions")
    op.drop_table("model_versions")
    op.drop_table("dataset_snapshots")
    op.drop_index("ix_jobs_project_kind_status", "jobs")
    op.drop_table("jobs")
