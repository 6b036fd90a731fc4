"""The migrations produce exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import warnings

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
