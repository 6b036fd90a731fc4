"""Stored quality reports: the Quality page reads agreement and scorecards computed by a job

Revision ID: 0014_quality_reports
Revises: 0013_prediction_log_time
Create Date: 2026-11-30 14:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0014_quality_reports"
down_revision: str | None = "0013_prediction_log_time"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quality_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labels", sa.Integer(), nullable=False),
        sa.Column("labels_through", sa.Integer(), nullable=False),
        sa.Column("outdated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_quality_reports_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_quality_reports_job_id_jobs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quality_reports")),
        sa.UniqueConstraint("project_id", "kind", name="uq_quality_reports_project_id_kind"),
    )


def downgrade() -> None:
    op.drop_table("quality_reports")
