"""The migrations produce exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from storage.db import create_db_engine
from storage.migrate import upgrade
from storage.models import Base

pytestmark = pytest.mark.postgres  # behaviour that can differ by dialect


def schema_diff(url: str) -> list:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection, warnings.catch_warnings():
            # SQLite cannot reflect expression indexes (users' lower(name)); PostgreSQL compares them.
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrations_match_the_models_exactly(database_url):
    upgrade(database_url)
    assert schema_diff(database_url) == []


def test_migrations_go_down_and_up_again(database_url):
    upgrade(database_url)
    upgrade_then = schema_diff(database_url)
    from alembic import command

    from storage.migrate import alembic_config

    command.downgrade(alembic_config(database_url), "base")
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            tables = {t for t in Base.metadata.tables if engine.dialect.has_table(connection, t)}
    finally:
        engine.dispose()
    assert tables == set()
    upgrade(database_url)
    assert schema_diff(database_url) == upgrade_then == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_a_busy_timeout(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 5000
    finally:
        engine.dispose()


def test_sqlite_read_sessions_do_not_wait_for_a_writer(tmp_path):
    """A request's sign-in check reads while an upload or a submission holds the write lock."""
    from storage.db import Database

    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    db = Database(url)
    try:
        with db.session() as writer:
            writer.execute(text("INSERT INTO users (name, role, token_hash) VALUES ('w', 'admin', 'h')"))
            with db.read_session() as reader:
                assert reader.execute(text("SELECT count(*) FROM users")).scalar() == 0  # not yet committed
    finally:
        db.dispose()


def test_user_names_that_differ_only_in_case_are_renamed_and_then_refused_by_the_index(database_url):
    """Before 0008 ``ADMIN`` could stand beside ``admin``: the upgrade renames the newer one, tokens unchanged."""
    from alembic import command
    from sqlalchemy.exc import IntegrityError

    from storage.migrate import alembic_config

    command.downgrade(alembic_config(database_url), "0007_worker_lanes")
    engine = create_db_engine(database_url)
    insert = text("INSERT INTO users (id, name, role, token_hash) VALUES (:id, :name, 'annotator', :hash)")
    try:
        with engine.begin() as connection:
            for user_id, name in ((1, "admin"), (2, "ADMIN"), (3, "Admin"), (4, "ADMIN-2"), (5, "bob")):
                connection.execute(insert, {"id": user_id, "name": name, "hash": f"h{user_id}"})
        upgrade(database_url)
        with engine.begin() as connection:
            rows = connection.execute(text("SELECT id, name, token_hash FROM users ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [
            (1, "admin", "h1"), (2, "ADMIN-2-2", "h2"), (3, "Admin-3", "h3"), (4, "ADMIN-2", "h4"), (5, "bob", "h5"),
        ]  # fmt: skip
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(insert, {"id": 6, "name": "BOB", "hash": "h6"})
    finally:
        engine.dispose()


def test_the_console_counts_and_weak_flags_are_backfilled_from_the_rows_already_there(database_url):
    """0016 fills project_counts, images.consensus_weak and images.assignment_count from a database that had rows
    before it."""
    from alembic import command

    from storage.migrate import alembic_config

    command.downgrade(alembic_config(database_url), "0015_box_label_issues")
    engine = create_db_engine(database_url)
    boxes = '[{"label": "a", "x": 0, "y": 0, "w": 1, "h": 1}, {"label": "b", "x": 1, "y": 1, "w": 1, "h": 1}]'
    # (project, split, queue_tier, label_count, consensus_label, tie, posterior, gold_label, consensus_boxes)
    images = [
        (1, "train", 0, 0, None, False, None, None, None),
        (1, "test", 2, 1, "a", False, None, None, None),
        (1, "train", 1, 2, "b", True, None, None, None),
        (1, "train", None, 2, "a", False, 0.95, None, None),
        (1, "test", None, 3, "b", False, 0.6, None, None),  # under this project's review_posterior of 0.8
        (1, "train", None, 3, "a", True, None, None, None),
        (1, "train", None, 1, "a", False, 0.5, "a", None),  # gold: never weak
        (2, "train", None, 1, None, False, None, None, boxes),
        (2, "test", None, 2, None, True, None, None, boxes),
    ]
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO projects (id, name, task_type, labels, settings) VALUES"
                    """ (1, 'p1', 'classification', '["a", "b"]', '{"review_posterior": 0.8}'),"""
                    """ (2, 'p2', 'detection', '["a", "b"]', '{}')"""
                )
            )
            connection.execute(
                text("INSERT INTO users (id, name, role, token_hash) VALUES (1, 'ann', 'annotator', 'h')")
            )
            for n, (project, split, tier, count, label, tie, posterior, gold, answer) in enumerate(images, start=1):
                connection.execute(
                    text(
                        "INSERT INTO images (id, project_id, sha256, thumbnail_sha256, width, height, format,"
                        " byte_size, split, source, original_name, labels_needed, label_count, queue_tier, priority,"
                        " consensus_label, consensus_tie, consensus_posterior, gold_label, consensus_boxes) VALUES"
                        " (:n, :project, :sha, :sha, 8, 8, 'PNG', 100, :split, 'upload', 'x.png', 3, :count, :tier, 0,"
                        " :label, :tie, :posterior, :gold, :answer)"
                    ),
                    {"n": n, "project": project, "sha": f"{n:064d}", "split": split, "count": count, "tier": tier,
                     "label": label, "tie": tie, "posterior": posterior, "gold": gold, "answer": answer},
                )  # fmt: skip
            for n, (current, day) in enumerate([(True, "2026-11-01"), (False, "2026-11-01"), (True, "2026-11-03")]):
                connection.execute(
                    text(
                        "INSERT INTO annotations (project_id, image_id, annotator_id, label, origin, is_current,"
                        " created_at) VALUES (1, :image, 1, 'a', 'human', :current, :at)"
                    ),
                    {"image": n + 2, "current": current, "at": datetime.fromisoformat(f"{day}T23:30:00+00:00")},
                )
            for image, annotator in [(2, 1), (3, 1)]:
                connection.execute(
                    text(
                        "INSERT INTO assignments (project_id, image_id, annotator_id, status, expires_at, updated_at)"
                        " VALUES (1, :image, :annotator, 'submitted', :at, :at)"
                    ),
                    {"image": image, "annotator": annotator, "at": datetime(2026, 11, 1, tzinfo=UTC)},
                )
        upgrade(database_url)
        with engine.begin() as connection:
            served = connection.execute(text("SELECT id, assignment_count FROM images WHERE assignment_count > 0"))
            assert sorted(tuple(r) for r in served) == [(2, 1), (3, 1)]
            sums = "SELECT project_id, figure, item, SUM(count) FROM project_counts GROUP BY project_id, figure, item"
            rows = connection.execute(text(sums))
            counts = {tuple(r[:3]): r[3] for r in rows if r[3]}
            weak = connection.execute(text("SELECT id FROM images WHERE consensus_weak ORDER BY id")).scalars().all()
    finally:
        engine.dispose()
    assert counts == {
        (1, "images", "unlabeled:train"): 1, (1, "images", "overlap:test"): 1, (1, "images", "review:train"): 1,
        (1, "images", "done:train"): 3, (1, "images", "done:test"): 1,
        (1, "class", "test:a"): 1, (1, "class", "train:b"): 1, (1, "class", "train:a"): 3, (1, "class", "test:b"): 1,
        (1, "day", "2026-11-01"): 2, (1, "day", "2026-11-03"): 1, (1, "annotator", "1"): 2,
        (2, "images", "done:train"): 1, (2, "images", "done:test"): 1,
        (2, "class", "train:a"): 1, (2, "class", "train:b"): 1, (2, "class", "test:a"): 1, (2, "class", "test:b"): 1,
    }  # fmt: skip
    assert weak == [3, 5, 6, 9]


def test_an_sqlite_database_with_rows_from_the_first_labels_upgrades_without_losing_any(tmp_path):
    """SQLite's batch mode copies a table and drops the old one, and with foreign keys on a drop deletes the rows
    that reference it (ON DELETE CASCADE): every revision since annotations exist must keep them all."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0002")  # the revision that added annotations
    connection = sqlite3.connect(tmp_path / "old.db")

    def insert(table: str, values: dict[str, object]) -> None:
        """A row with ``values`` and a placeholder in every other required column of that revision."""
        row = dict(values)
        for _, name, kind, not_null, default, primary in connection.execute(f"PRAGMA table_info({table})"):
            if name not in row and not_null and default is None and not primary:
                kind = kind.upper()
                row[name] = 1 if "INT" in kind or "BOOL" in kind else "2026-01-01 00:00:00" if "DATE" in kind else "x"
        marks = ", ".join("?" * len(row))
        connection.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", list(row.values()))

    insert("projects", {"id": 1, "name": "p", "labels": '["a"]', "settings": "{}"})
    insert("users", {"id": 1, "name": "u", "token_hash": "h", "role": "annotator"})
    insert("images", {"id": 1, "project_id": 1, "sha256": "s", "split": "train"})
    insert("assignments", {"project_id": 1, "image_id": 1, "annotator_id": 1, "status": "submitted"})
    insert("annotations", {"project_id": 1, "image_id": 1, "annotator_id": 1, "label": "a", "is_current": 1})
    connection.commit()
    connection.close()
    upgrade(url)
    engine = create_db_engine(url)
    try:
        with engine.connect() as upgraded:
            counts = {
                t: upgraded.scalar(text(f"SELECT COUNT(*) FROM {t}")) for t in ("images", "assignments", "annotations")
            }
            served = upgraded.scalar(text("SELECT assignment_count FROM images"))
    finally:
        engine.dispose()
    assert counts == {"images": 1, "assignments": 1, "annotations": 1} and served == 1
