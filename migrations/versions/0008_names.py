"""Names: user names unique ignoring case

Revision ID: 0008_names
Revises: 0007_worker_lanes
Create Date: 2026-12-01 10:00:00

Users whose names differ only in case (``ADMIN`` beside ``admin``) could exist before; the newer of each
such pair is renamed ``<name>-<id>`` (their token is unchanged) so that the unique index can be built.
"""

import itertools
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_names"
down_revision: str | None = "0007_worker_lanes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _free_name(name: str, user_id: int, taken: set[str]) -> str:
    for n in itertools.count(1):
        suffix = f"-{user_id}" if n == 1 else f"-{user_id}-{n}"
        candidate = name[: 100 - len(suffix)] + suffix
        if candidate.lower() not in taken:
            return candidate
    raise AssertionError("unreachable")


def upgrade() -> None:
    users = sa.table("users", sa.column("id", sa.Integer()), sa.column("name", sa.String(100)))
    connection = op.get_bind()
    rows = connection.execute(sa.select(users.c.id, users.c.name).order_by(users.c.id)).all()
    taken = {name.lower() for _, name in rows}
    kept: set[str] = set()
    for user_id, name in rows:
        if name.lower() not in kept:
            kept.add(name.lower())
            continue
        renamed = _free_name(name, user_id, taken)
        taken.add(renamed.lower())
        connection.execute(sa.update(users).where(users.c.id == user_id).values(name=renamed))
    op.create_index("uq_users_lower_name", "users", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_lower_name", "users")
