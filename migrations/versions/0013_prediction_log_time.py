"""The prediction log by time: per-day volume and pruning by age read an index

Revision ID: 0013_prediction_log_time
Revises: 0012_console_indexes
Create Date: 2026-11-30 12:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013_prediction_log_time"
down_revision: str | None = "0012_console_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_prediction_logs_project_id_created_at", "prediction_logs", ["project_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_prediction_logs_project_id_created_at", "prediction_logs")
