"""Box label issues: a detection issue's kind, the box it is about, and each kind's score

Revision ID: 0015_box_label_issues
Revises: 0014_quality_reports
Create Date: 2026-11-30 14:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_box_label_issues"
down_revision: str | None = "0014_quality_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("label_issues") as table:
        table.add_column(sa.Column("issue_type", sa.String(20), nullable=True))
        table.add_column(sa.Column("box", sa.JSON(), nullable=True))
        table.add_column(sa.Column("type_scores", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("label_issues") as table:
        table.drop_column("type_scores")
        table.drop_column("box")
        table.drop_column("issue_type")
