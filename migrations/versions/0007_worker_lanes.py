"""Worker lanes: each lane's supervisor heartbeat, restarts and last exit, for /health

Revision ID: 0007_worker_lanes
Revises: 0006_pruned_heads
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_worker_lanes"
down_revision: str | None = "0006_pruned_heads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_lanes",
        sa.Column("supervisor", sa.String(length=200), nullable=False),
        sa.Column("lane", sa.String(length=32), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("last_exit", sa.String(length=500), nullable=True),
        sa.Column("last_exit_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("supervisor", "lane", name=op.f("pk_worker_lanes")),
    )


def downgrade() -> None:
    op.drop_table("worker_lanes")
