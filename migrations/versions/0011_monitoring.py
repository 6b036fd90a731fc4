"""After deployment: the log of /predict answers, the drift series, shadow and canary models

Revision ID: 0011_monitoring
Revises: 0010_labelstudio_backend
Create Date: 2026-11-30 11:30:00

``images.source`` and ``jobs.kind`` are VARCHAR(32) without CHECK constraints: the new values ``production`` and
``drift`` need no schema change.
"""

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0011_monitoring"
down_revision: str | None = "0010_labelstudio_backend"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prediction_logs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("backbone_id", sa.Integer(), nullable=True),
        sa.Column("fallback", sa.Boolean(), nullable=False),
        sa.Column("input_sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("boxes", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_prediction_logs_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model_versions.id"], name=op.f("fk_prediction_logs_model_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["backbone_id"], ["model_versions.id"], name=op.f("fk_prediction_logs_backbone_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_prediction_logs_image_id_images"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_logs")),
    )
    op.create_index("ix_prediction_logs_project_id_id", "prediction_logs", ["project_id", "id"])
    op.create_table(
        "drift_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("champion_id", sa.Integer(), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("predictions", sa.Integer(), nullable=False),
        sa.Column("reference", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("domain_auc", sa.Float(), nullable=False),
        sa.Column("mmd", sa.Float(), nullable=False),
        sa.Column("mmd_p", sa.Float(), nullable=False),
        sa.Column("label_chi2_p", sa.Float(), nullable=True),
        sa.Column("most_drifted", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_drift_points_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_drift_points_job_id_jobs"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["champion_id"], ["model_versions.id"], name=op.f("fk_drift_points_champion_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_points")),
    )
    op.create_index("ix_drift_points_project_id_id", "drift_points", ["project_id", "id"])
    op.add_column("model_versions", sa.Column("deployment", sa.String(length=16), nullable=True))
    op.add_column("model_versions", sa.Column("traffic_share", sa.Float(), nullable=True))


def downgrade() -> None:
    with warnings.catch_warnings(), op.batch_alter_table("model_versions") as batch:
        # SQLite's batch mode reflects the users table, whose lower(name) index SQLAlchemy cannot reflect there.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        batch.drop_column("traffic_share")
        batch.drop_column("deployment")
    op.drop_index("ix_drift_points_project_id_id", "drift_points")
    op.drop_table("drift_points")
    op.drop_index("ix_prediction_logs_project_id_id", "prediction_logs")
    op.drop_table("prediction_logs")
    op.execute("UPDATE images SET source = 'upload' WHERE source = 'production'")  # keep them and their labels
    op.execute("DELETE FROM jobs WHERE kind = 'drift'")
