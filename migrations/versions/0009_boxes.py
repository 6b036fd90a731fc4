"""Detection projects: boxes on annotations, gold and consensus boxes on images

Revision ID: 0009_boxes
Revises: 0008_names
Create Date: 2026-12-02 09:00:00

A detection annotation stores its boxes and no label, so ``annotations.label`` becomes nullable; classification
rows keep their label and get no boxes. Box lists are JSON: [{label, x, y, w, h}] in upright-image pixels.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_boxes"
down_revision: str | None = "0008_names"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TASK_TYPES = ("classification", "detection")


def upgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.alter_column("label", existing_type=sa.String(100), nullable=True)
        batch.add_column(sa.Column("boxes", sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("gold_boxes", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("consensus_boxes", sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table("projects") as batch:
        batch.alter_column(
            "task_type",
            existing_type=sa.Enum(*TASK_TYPES[:1], name="task_type", native_enum=False, length=32),
            type_=sa.Enum(*TASK_TYPES, name="task_type", native_enum=False, length=32),
            existing_nullable=False,
        )


def downgrade() -> None:
    # Detection projects cannot exist before this revision: their annotations, images and the projects go.
    op.execute("DELETE FROM projects WHERE task_type = 'detection'")
    with op.batch_alter_table("projects") as batch:
        batch.alter_column(
            "task_type",
            existing_type=sa.Enum(*TASK_TYPES, name="task_type", native_enum=False, length=32),
            type_=sa.Enum(*TASK_TYPES[:1], name="task_type", native_enum=False, length=32),
            existing_nullable=False,
        )
    with op.batch_alter_table("images") as batch:
        batch.drop_column("consensus_boxes")
        batch.drop_column("gold_boxes")
    with op.batch_alter_table("annotations") as batch:
        batch.drop_column("boxes")
        batch.alter_column("label", existing_type=sa.String(100), nullable=False)
