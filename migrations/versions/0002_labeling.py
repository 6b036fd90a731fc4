"""Labeling: queue columns on images, assignments (leases), annotations, predictions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 23:39:18
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now() -> sa.sql.elements.ClauseElement:
    return sa.func.now()


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("labels_needed", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("label_count", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("queue_tier", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("priority", sa.Float(), server_default="0", nullable=False))
        batch.add_column(sa.Column("review_reason", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("gold_label", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("consensus_label", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("consensus_tie", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute("UPDATE images SET queue_tier = 0")  # every image stored so far waits for its first label
    op.create_index("ix_images_queue", "images", ["project_id", "queue_tier", "priority", "id"])
    op.create_index("ix_images_gold", "images", ["project_id", "gold_label"])

    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("leased", "submitted", "skipped", name="assignment_status", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["users.id"], name=op.f("fk_assignments_annotator_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_assignments_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_assignments_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assignments")),
        sa.UniqueConstraint("image_id", "annotator_id", name="uq_assignments_image_id_annotator_id"),
    )
    op.create_index(
        "ix_assignments_annotator_status", "assignments", ["annotator_id", "project_id", "status", "expires_at"]
    )

    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column(
            "origin",
            sa.Enum("human", "imported", name="annotation_origin", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("gold_correct", sa.Boolean(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["users.id"], name=op.f("fk_annotations_annotator_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_annotations_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_annotations_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["supersedes_id"], ["annotations.id"], name=op.f("fk_annotations_supersedes_id_annotations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotations")),
        sa.UniqueConstraint("annotator_id", "idempotency_key", name="uq_annotations_annotator_id_idempotency_key"),
    )
    op.create_index("ix_annotations_annotator", "annotations", ["annotator_id", "project_id"])
    op.create_index("ix_annotations_image_id", "annotations", ["image_id", "is_current"])
    op.create_index("ix_annotations_project_id_id", "annotations", ["project_id", "id"])

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_predictions_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
    )
    op.create_index("ix_predictions_image_id_id", "predictions", ["image_id", "id"])


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("annotations")
    op.drop_table("assignments")
    op.drop_index("ix_images_gold", "images")
    op.drop_index("ix_images_queue", "images")
    with op.batch_alter_table("images") as batch:
        for column in (
            "consensus_tie",
            "consensus_label",
            "gold_label",
            "review_reason",
            "priority",
            "queue_tier",
            "label_count",
            "labels_needed",
        ):
            batch.drop_column(column)
