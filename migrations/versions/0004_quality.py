"""Label quality: consensus posterior, lease times, annotator exclusions, Dawid-Skene fits, label issues

Revision ID: 0004_quality
Revises: 0003_flywheel
Create Date: 2026-11-24 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_quality"
down_revision: str | None = "0003_flywheel"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("consensus_posterior", sa.Float(), nullable=True))
    with op.batch_alter_table("assignments") as batch:
        batch.add_column(sa.Column("leased_at", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "annotator_exclusions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("excluded_by_id", sa.Integer(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["users.id"], name=op.f("fk_annotator_exclusions_annotator_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["excluded_by_id"],
            ["users.id"],
            name=op.f("fk_annotator_exclusions_excluded_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_annotator_exclusions_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["revoked_by_id"], ["users.id"], name=op.f("fk_annotator_exclusions_revoked_by_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotator_exclusions")),
    )
    op.create_index(
        "ix_annotator_exclusions_project_annotator", "annotator_exclusions", ["project_id", "annotator_id"]
    )

    op.create_table(
        "consensus_fits",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("priors", sa.JSON(), nullable=False),
        sa.Column("default_accuracy", sa.Float(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("overlapped_images", sa.Integer(), nullable=False),
        sa.Column("iterations", sa.Integer(), nullable=False),
        sa.Column("fitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_consensus_fits_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_consensus_fits")),
    )

    op.create_table(
        "annotator_skills",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("confusion", sa.JSON(), nullable=False),
        sa.Column("labels", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["users.id"], name=op.f("fk_annotator_skills_annotator_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_annotator_skills_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "annotator_id", name=op.f("pk_annotator_skills")),
    )

    op.create_table(
        "label_issues",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("given_label", sa.String(length=100), nullable=False),
        sa.Column("suggested_label", sa.String(length=100), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("sent_for_review_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_label_issues_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_label_issues_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_issues")),
        sa.UniqueConstraint("project_id", "image_id", name="uq_label_issues_project_id_image_id"),
    )
    op.create_index("ix_label_issues_project_id_rank", "label_issues", ["project_id", "rank"])


def downgrade() -> None:
    op.drop_table("label_issues")
    op.drop_table("annotator_skills")
    op.drop_table("consensus_fits")
    op.drop_table("annotator_exclusions")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("leased_at")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("consensus_posterior")
