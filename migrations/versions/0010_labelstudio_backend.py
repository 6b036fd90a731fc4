"""Label Studio ML backend: a project's link to a Label Studio project, its fetched tasks and received annotations

Revision ID: 0010_labelstudio_backend
Revises: 0009_boxes
Create Date: 2026-11-30 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0010_labelstudio_backend"
down_revision: str | None = "0009_boxes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "labelstudio_links",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("access_token", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("ls_project_id", sa.Integer(), nullable=True),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_labelstudio_links_project_id_projects", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", name="pk_labelstudio_links"),
    )
    op.create_table(
        "labelstudio_tasks",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(2000), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("pushed_score", sa.Float(), nullable=True),
        sa.Column("pushed_model", sa.String(100), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_labelstudio_tasks_project_id_projects", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_labelstudio_tasks_image_id_images", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "ls_task_id", name="pk_labelstudio_tasks"),
    )
    op.create_index("ix_labelstudio_tasks_image_id", "labelstudio_tasks", ["image_id"])
    op.create_table(
        "labelstudio_annotations",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("ls_annotation_id", sa.BigInteger(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_labelstudio_annotations_project_id_projects", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_labelstudio_annotations_image_id_images", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["users.id"], name="fk_labelstudio_annotations_annotator_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "ls_annotation_id", name="pk_labelstudio_annotations"),
    )


def downgrade() -> None:
    op.drop_table("labelstudio_annotations")
    op.drop_index("ix_labelstudio_tasks_image_id", table_name="labelstudio_tasks")
    op.drop_table("labelstudio_tasks")
    op.drop_table("labelstudio_links")
