"""Factories for tests: plain functions that make users and projects through the real code paths."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi.testclient import TestClient

from storage.models import Role
from storage.users import create_user


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
