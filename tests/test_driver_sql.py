"""Statements run on the DB-API cursor (``storage.driver_sql``): the same values, errors and events as SQLAlchemy's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, event, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.driver_sql import DriverStatement
from storage.models import Project, Role, TaskType, User

pytestmark = pytest.mark.postgres  # each driver converts values its own way

PROJECT_KEYS = ("name", "task_type", "labels", "settings", "created_at")
INSERT_PROJECT = DriverStatement(insert(Project).returning(Project.id, Project.created_at), keys=PROJECT_KEYS)
READ_PROJECT = DriverStatement(select(*Project.columns()).where(Project.id == bindparam("id")))
RENAME = DriverStatement(update(Project).where(Project.id == bindparam("id")).values(name=bindparam("new_name")))
USER_ROLES = DriverStatement(select(User.name, User.role).where(User.role == Role.annotator).order_by(User.name))


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    yield database
    database.dispose()


def test_values_go_in_and_come_out_as_through_sqlalchemy(db):
    created = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    values = {
        "name": "ünïcode",
        "task_type": TaskType.detection,
        "labels": ["cat", "døg"],
        "settings": {"lease_minutes": 5, "nested": {"a": [1, None]}},
        "created_at": created,
    }
    with db.session() as session:
        ((project_id, stored_at),) = INSERT_PROJECT.rows(session.connection(), values)
        assert stored_at == created and stored_at.tzinfo is not None
        session.add_all([User(name=f"a{i}", role=Role.annotator, token_hash=f"h{i}") for i in range(2)])
        session.add(User(name="boss", role=Role.admin, token_hash="h9"))
    with db.session() as session:
        connection = session.connection()
        ours = READ_PROJECT.first(connection, {"id": project_id})
        theirs = session.execute(select(*Project.columns()).where(Project.id == project_id)).one()
        assert ours == tuple(theirs)
        assert ours is not None and ours[2] is TaskType.detection and ours[4] == values["settings"]
        # A literal of the statement (the enum) is converted as a parameter would be.
        assert USER_ROLES.rows(connection, {}) == [("a0", Role.annotator), ("a1", Role.annotator)]
        assert RENAME.rows(connection, {"id": project_id, "new_name": "renamed"}) == []
        assert READ_PROJECT.first(connection, {"id": 10**6}) is None
    with db.read_session() as session:
        assert session.get_one(Project, project_id).name == "renamed"


def test_a_driver_error_is_sqlalchemys_and_the_transaction_rolls_back(db):
    values = {"name": "twice", "task_type": TaskType.classification, "labels": [], "settings": {}}
    with db.session() as session:
        INSERT_PROJECT.rows(session.connection(), {**values, "created_at": datetime.now(UTC)})
    with pytest.raises(IntegrityError), db.session() as session:
        INSERT_PROJECT.rows(session.connection(), {**values, "name": "kept?", "created_at": datetime.now(UTC)})
        INSERT_PROJECT.rows(session.connection(), {**values, "created_at": datetime.now(UTC)})
    with db.read_session() as session:
        assert session.scalars(select(Project.name)).all() == ["twice"]


def test_cursor_listeners_see_every_statement(db):
    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    with db.session() as session:
        READ_PROJECT.first(session.connection(), {"id": 1})
    assert any(sql.startswith("SELECT projects.id") for sql in seen), seen


def test_statements_it_cannot_run_as_sqlalchemy_would_are_refused(db):
    with db.session() as session:
        connection = session.connection()
        with pytest.raises(ValueError, match="expanding"):
            DriverStatement(select(Project.id).where(Project.id.in_([1, 2]))).rows(connection, {})
        with pytest.raises(ValueError, match="default"):  # created_at's default would go unset
            DriverStatement(insert(Project), keys=("name", "task_type", "labels", "settings")).rows(connection, {})
