"""Console: covering indexes for the overview's counts

Revision ID: 0012_console_indexes
Revises: 0011_monitoring
Create Date: 2026-11-30 11:30:00

Images by queue state and split, current labels per class and split, answers per annotator and per day: each count
reads one of these indexes instead of every row of a project (bench/console.py, 100,000 images).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_console_indexes"
down_revision: str | None = "0011_monitoring"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_images_states": ("images", ["project_id", "queue_tier", "split", "label_count"]),
    "ix_images_consensus": ("images", ["project_id", "consensus_label", "split"]),
    "ix_annotations_current": ("annotations", ["project_id", "is_current", "annotator_id"]),
    "ix_annotations_created": ("annotations", ["project_id", "created_at"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
