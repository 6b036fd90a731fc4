"""Shared fixtures: a real database (SQLite file, and PostgreSQL when reachable), the app, users, projects.

Tests that need a server (PostgreSQL, the S3 server process) skip locally when it is absent; CI sets
``LABELWHEEL_TEST_REQUIRE=postgres,s3`` so the same absence fails the run instead of hiding.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, text

from service.app import create_app
from storage.migrate import upgrade
from storage.models import Base, Role
from storage.settings import Settings, load_settings
from storage.users import create_user

POSTGRES_URL = os.environ.get("LABELWHEEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRED = {name.strip() for name in os.environ.get("LABELWHEEL_TEST_REQUIRE", "").split(",") if name.strip()}


def unavailable(service: str, why: str) -> None:
    """Skip, or fail when CI made this service mandatory."""
    message = f"{service} is not available ({why})"
    if service in REQUIRED:
        pytest.fail(f"{message}, and LABELWHEEL_TEST_REQUIRE makes it mandatory")
    pytest.skip(f"{message}; set up {service} and LABELWHEEL_TEST_REQUIRE={service} to run this test")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated to head, dropped at the end."""
    admin_engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin_engine.connect() as connection:
            name = f"labelwheel_test_{uuid.uuid4().hex[:12]}"
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin_engine.dispose()
        unavailable("postgres", f"{POSTGRES_URL}: {type(exc).__name__}: {exc}".splitlines()[0])
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        with admin_engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test runs on a fresh SQLite file, and again on PostgreSQL (emptied before the test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labelwheel.db'}"
    url = request.getfixturevalue("postgres_database")
    _truncate_postgres(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def app(settings: Settings):
    application = create_app(settings, migrate=True)
    yield application
    application.state.runtime.db.dispose()


@pytest.fixture
def client(app) -> TestClient:
    return TestClient(app)


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: Role
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_user(app, name: str, role: Role) -> Account:
    with app.state.runtime.db.session() as session:
        user, token = create_user(session, name=name, role=role)
        return Account(user.id, name, role, token)


@pytest.fixture
def admin(app) -> Account:
    return make_user(app, "root", Role.admin)


@pytest.fixture
def engineer(app) -> Account:
    return make_user(app, "eng", Role.engineer)


@pytest.fixture
def annotator(app) -> Account:
    return make_user(app, "ann", Role.annotator)


def make_project(client: TestClient, admin: Account, *members: Account, **overrides) -> dict:
    body = {"name": f"project-{uuid.uuid4().hex[:8]}", "labels": ["cat", "dog", "bird"], **overrides}
    response = client.post("/api/v1/projects", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    project = response.json()
    for member in members:
        added = client.post(
            f"/api/v1/projects/{project['id']}/members", json={"user_id": member.id}, headers=admin.headers
        )
        assert added.status_code == 201, added.text
    return project
