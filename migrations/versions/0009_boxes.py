"""Detection projects: boxes on annotations, gold and consensus boxes on images

Revision ID: 0009_boxes
Revises: 0008_names
Create Date: 2026-12-02 09:00:00

A detection annotation stores its boxes and no label, so ``annotations.label`` becomes nullable; classification
rows keep their label and get no boxes. Box lists are JSON: [{label, x, y, w, h}] in upright-image pixels.
"""

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0009_boxes"
down_revision: str | None = "0008_names"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


@contextmanager
def _quiet_reflection() -> Iterator[None]:
    # SQLite's batch mode reflects the tables annotations refer to, users among them, whose lower(name) index
    # SQLAlchemy cannot reflect there and warns about on stderr (where commands print their answers).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        yield


def upgrade() -> None:
    op.add_column("images", sa.Column("gold_boxes", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("images", sa.Column("consensus_boxes", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("annotations", sa.Column("boxes", sa.JSON(none_as_null=True), nullable=True))
    with _quiet_reflection(), op.batch_alter_table("annotations") as batch:
        batch.alter_column("label", existing_type=sa.String(100), nullable=True)
    # projects.task_type is a VARCHAR(32) without a CHECK constraint: "detection" needs no schema change.


def downgrade() -> None:
    # Detection projects cannot exist before this revision: they go, with their images and annotations.
    op.execute("DELETE FROM projects WHERE task_type = 'detection'")
    with _quiet_reflection(), op.batch_alter_table("annotations") as batch:
        batch.drop_column("boxes")
        batch.alter_column("label", existing_type=sa.String(100), nullable=False)
    with _quiet_reflection(), op.batch_alter_table("images") as batch:
        batch.drop_column("consensus_boxes")
        batch.drop_column("gold_boxes")
