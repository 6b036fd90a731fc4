"""Mining: per-model scores on predictions, and per-project job schedules

Revision ID: 0005_mining
Revises: 0004_quality
Create Date: 2026-11-24 02:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_mining"
down_revision: str | None = "0004_quality"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_KINDS = ("train", "refresh", "embed", "label_quality", "mine", "export")


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("model_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("margin", sa.Float(), nullable=True))
        batch.add_column(sa.Column("entropy", sa.Float(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_predictions_model_id_model_versions"), "model_versions", ["model_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_unique_constraint("uq_predictions_model_id_image_id", ["model_id", "image_id"])

    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Enum(*JOB_KINDS, name="job_kind", native_enum=False, length=32), nullable=False),
        sa.Column("cron", sa.String(length=100), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_schedules_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["last_job_id"], ["jobs.id"], name=op.f("fk_schedules_last_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("project_id", "kind", name="uq_schedules_project_id_kind"),
    )
    op.create_index("ix_schedules_next_run_at", "schedules", ["next_run_at"])


def downgrade() -> None:
    op.drop_index("ix_schedules_next_run_at", "schedules")
    op.drop_table("schedules")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint("uq_predictions_model_id_image_id", type_="unique")
        batch.drop_constraint(op.f("fk_predictions_model_id_model_versions"), type_="foreignkey")
        batch.drop_column("entropy")
        batch.drop_column("margin")
        batch.drop_column("model_id")
