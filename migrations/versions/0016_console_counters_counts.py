"""Console counters: each project's figures kept by triggers, and an index of the weak consensus labels

Revision ID: 0016_console_counters_counts
Revises: 0015_box_label_issues
Create Date: 2026-11-30 17:00:00

The console's counts (images by state and split, labels per class, answers per day and per annotator) were grouped
queries over every row of a project, so a page grew with it. ``project_counts`` holds them instead, kept by row
triggers on ``images`` and ``annotations`` in the transaction of every change (the ORM's, Core bulk inserts, the
benchmarks' and imports' rows alike), and backfilled here. The triggers only insert rows of changes (+n or -n per
item), never update a shared row: on PostgreSQL concurrent labels would otherwise queue on a project's few counter
rows until they commit, and a transaction changing many images (a consensus refit) would deadlock with them. A
figure is the sum of its rows; the worker's minute upkeep folds each project's rows into one per item
(storage.projects.compact_counts).

``images.consensus_weak`` marks a weak consensus on a labeled image (written with the consensus, by code: it depends
on the project's review_posterior), and a partial index on it serves the weak list a page at a time. An index of
a project's assignments by status serves the progress call's live leases; ``images.assignment_count``, kept by
triggers on ``assignments``, lets it look for images served to the whole team among the few waiting images
served that often, not among every task ever served.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import op

revision: str = "0016_console_counters_counts"
down_revision: str | None = "0015_box_label_issues"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


@dataclass(frozen=True)
class Part:
    """One source of counts for a row ``{r}``: its item, what else it reads from, and when the row counts."""

    item: str
    source: str = ""
    when: str = "1 = 1"


@dataclass(frozen=True)
class Figure:
    name: str
    table: str
    parts: tuple[Part, ...]
    columns: tuple[str, ...]  # those whose update can change the figure; none: rows are counted once
    changed: str = ""  # true when an update changed the figure


def _figures(postgres: bool) -> list[Figure]:
    state = (
        "CASE WHEN {r}.queue_tier IS NULL THEN 'done' WHEN {r}.queue_tier = 1 THEN 'review'"
        " WHEN {r}.label_count > 0 THEN 'overlap' ELSE 'unlabeled' END || ':' || {r}.split"
    )
    if postgres:
        box_label, boxes = "(e.value ->> 'label')", "json_array_elements({r}.consensus_boxes) AS e"
        day = "to_char({r}.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        distinct, as_text = "IS DISTINCT FROM", "::text"  # json has no equality
    else:
        box_label, boxes = "json_extract(e.value, '$.label')", "json_each({r}.consensus_boxes) AS e"
        day = "substr({r}.created_at, 1, 10)"  # stored as 'YYYY-MM-DD HH:MM:SS', in UTC
        distinct, as_text = "IS NOT", ""
    classes = ("consensus_label", "consensus_boxes", "split")
    return [
        Figure(
            "images",
            "images",
            (Part(state),),
            ("queue_tier", "label_count", "split"),
            f"({state.format(r='OLD')}) {distinct} ({state.format(r='NEW')})",
        ),
        Figure(
            "class",
            "images",
            (
                Part("{r}.split || ':' || {r}.consensus_label", when="{r}.consensus_label IS NOT NULL"),
                Part(f"{{r}}.split || ':' || {box_label}", source=boxes, when="{r}.consensus_boxes IS NOT NULL"),
            ),
            classes,
            " OR ".join(f"OLD.{c}{as_text} {distinct} NEW.{c}{as_text}" for c in classes),
        ),
        Figure("day", "annotations", (Part(day),), ()),
        Figure(
            "annotator",
            "annotations",
            (Part("CAST({r}.annotator_id AS VARCHAR(20))", when="{r}.is_current"),),
            ("is_current",),
            f"OLD.is_current {distinct} NEW.is_current",
        ),
    ]


def _counts(figure: Figure, rows: dict[str, int]) -> str:
    """One statement inserting ``figure``'s changes for ``rows`` (a row name and +1 or -1 each) into project_counts,
    summed by item (an update that moves nothing inserts nothing)."""
    selects = []
    for row, sign in rows.items():
        for part in figure.parts:
            sources = [f"{figure.table} AS {row}"] if row == "t" else []  # "t": every row of the table (backfill)
            sources += [part.source.format(r=row)] if part.source else []
            selects.append(
                f"SELECT {row}.project_id AS project_id, {part.item.format(r=row)} AS item, {sign} AS n"
                + (f" FROM {', '.join(sources)}" if sources else "")
                + f" WHERE {part.when.format(r=row)}"
            )
    return (
        f"INSERT INTO project_counts (project_id, figure, item, count) SELECT project_id, '{figure.name}', item, SUM(n)"
        f" FROM ({' UNION ALL '.join(selects)}) AS d WHERE item IS NOT NULL"
        # Not for a project being deleted (its images and annotations go by cascade, its counts with it).
        " AND EXISTS (SELECT 1 FROM projects AS p WHERE p.id = d.project_id)"
        " GROUP BY project_id, item HAVING SUM(n) <> 0"
    )


def _triggers(figure: Figure) -> list[tuple[str, str, str, str]]:
    """(name, event, condition, statement) of each trigger keeping ``figure``."""
    name = f"count_{figure.table}_{figure.name}"
    triggers = [
        (f"{name}_insert", "INSERT", "", _counts(figure, {"NEW": 1})),
        (f"{name}_delete", "DELETE", "", _counts(figure, {"OLD": -1})),
    ]
    if figure.columns:
        event = f"UPDATE OF {', '.join(figure.columns)}"
        triggers.append((f"{name}_update", event, figure.changed, _counts(figure, {"OLD": -1, "NEW": 1})))
    return triggers


def upgrade() -> None:
    op.create_table(
        "project_counts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("figure", sa.String(16), nullable=False),
        sa.Column("item", sa.String(120), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_project_counts_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_project_counts")),
    )
    # Covering: a figure's sum reads the index alone.
    op.create_index("ix_project_counts_figure", "project_counts", ["project_id", "figure", "item", "count"])
    # In place, never batch mode: SQLite's batch copy drops the old table, and with it (ON DELETE CASCADE) every
    # annotation.
    op.add_column("images", sa.Column("consensus_weak", sa.Boolean(), server_default=sa.false(), nullable=False))
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:  # writers still running old code wait until the triggers exist, so the backfills miss nothing
        op.execute("LOCK TABLE images, annotations, assignments IN SHARE ROW EXCLUSIVE MODE")
    op.create_index(
        "ix_images_weak",
        "images",
        ["project_id", "id"],
        sqlite_where=sa.text("consensus_weak = 1 AND queue_tier IS NULL"),
        postgresql_where=sa.text("consensus_weak AND queue_tier IS NULL"),
    )
    _mark_weak(postgres)
    op.create_index("ix_assignments_project_status", "assignments", ["project_id", "status", "expires_at"])
    _count_assignments(postgres)
    for figure in _figures(postgres):
        op.execute(_counts(figure, {"t": 1}))
        for name, event, condition, statement in _triggers(figure):
            _create_trigger(name, figure.table, event, condition, statement, postgres=postgres)


def _create_trigger(name: str, table: str, event: str, condition: str, statement: str, *, postgres: bool) -> None:
    """An AFTER ``event`` row trigger running ``statement`` (when ``condition``, if any), in each dialect's form."""
    if postgres:
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {statement}; RETURN NULL; END $$"
        )
        when = f" WHEN ({condition})" if condition else ""
        op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when} EXECUTE FUNCTION {name}()")
    else:
        when = f" WHEN {condition}" if condition else ""
        op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when} BEGIN {statement}; END")


def _drop_trigger(name: str, table: str, *, postgres: bool) -> None:
    op.execute(f"DROP TRIGGER {name} ON {table}" if postgres else f"DROP TRIGGER {name}")
    if postgres:
        op.execute(f"DROP FUNCTION {name}()")


ASSIGNMENT_TRIGGERS = {"count_assignments_insert": ("INSERT", "NEW", "+"), "count_assignments_delete": ("DELETE", "OLD", "-")}


def _count_assignments(postgres: bool) -> None:
    """images.assignment_count: backfilled, then kept by a trigger on each insert and delete of an assignment."""
    op.add_column("images", sa.Column("assignment_count", sa.Integer(), server_default="0", nullable=False))
    op.execute(
        "UPDATE images SET assignment_count = (SELECT COUNT(*) FROM assignments AS a WHERE a.image_id = images.id)"
    )
    op.create_index(
        "ix_images_served",
        "images",
        ["project_id", "assignment_count"],
        sqlite_where=sa.text("queue_tier IS NOT NULL"),
        postgresql_where=sa.text("queue_tier IS NOT NULL"),
    )
    for name, (event, row, sign) in ASSIGNMENT_TRIGGERS.items():
        statement = f"UPDATE images SET assignment_count = assignment_count {sign} 1 WHERE id = {row}.image_id"
        _create_trigger(name, "assignments", event, "", statement, postgres=postgres)


def _mark_weak(postgres: bool) -> None:
    """Mark the weak consensus labels already there, as annotation.consensus writes them: on a labeled image without
    a gold answer, a tie; in a classification project also no label, or a posterior under the project's
    review_posterior (0.7 unless set)."""
    threshold = (
        "CAST(p.settings ->> 'review_posterior' AS FLOAT)"
        if postgres
        else "json_extract(p.settings, '$.review_posterior')"
    )
    op.execute(
        "UPDATE images SET consensus_weak = (label_count > 0 AND gold_label IS NULL AND gold_boxes IS NULL"
        " AND (consensus_tie OR EXISTS (SELECT 1 FROM projects AS p WHERE p.id = images.project_id"
        " AND p.task_type = 'classification' AND (consensus_label IS NULL"
        f" OR consensus_posterior < COALESCE({threshold}, 0.7)))))"
    )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in ASSIGNMENT_TRIGGERS:
        _drop_trigger(name, "assignments", postgres=postgres)
    op.drop_index("ix_images_served", table_name="images")
    op.execute("ALTER TABLE images DROP COLUMN assignment_count")
    for figure in _figures(postgres):
        for name, _, _, _ in _triggers(figure):
            _drop_trigger(name, figure.table, postgres=postgres)
    op.drop_index("ix_assignments_project_status", table_name="assignments")
    op.drop_index("ix_images_weak", table_name="images")
    op.execute("ALTER TABLE images DROP COLUMN consensus_weak")  # in place, as upgrade added it
    op.drop_table("project_counts")
