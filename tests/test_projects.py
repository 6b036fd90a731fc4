"""Projects, label sets, settings and memberships through the HTTP API."""

from __future__ import annotations

import pytest

from tests.factories import make_project


def test_create_and_read_a_project_with_its_ordered_labels(client, admin):
    body = {"name": "  pets  ", "labels": ["zebra", "cat", "ant"], "settings": {"overlap_rate": 0.25}}
    created = client.post("/api/v1/projects", json=body, headers=admin.headers)
    assert created.status_code == 201
    project = created.json()
    assert project["name"] == "pets"
    assert project["labels"] == ["zebra", "cat", "ant"]
    settings = {
        k: v for k, v in project["settings"].items() if k not in ("training", "mining", "monitoring", "distillation")
    }
    assert settings == {
        "overlap_rate": 0.25, "overlap_k": 3, "lease_minutes": 10, "gold_rate": 0.05,
        "auto_review": True, "review_posterior": 0.7, "review_max_labels": 5, "max_boxes": 500, "iou_threshold": 0.5,
        "box_quorum": None, "tight_iou": 0.75, "hotkeys": {}, "quality_report_interval_seconds": 60.0,
    }  # fmt: skip
    assert project["settings"]["training"]["min_new_labels"] == 50
    assert project["settings"]["mining"]["strategy"] == "margin_kcenter"
    assert project["settings"]["monitoring"]["capture"] == "none"  # production images stay out unless asked for
    assert project["task_type"] == "classification"
    read = client.get(f"/api/v1/projects/{project['id']}", headers=admin.headers).json()
    assert read == project


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (["only-one"], "2 to 1000 labels"),
        ([f"l{i}" for i in range(1001)], "2 to 1000 labels"),
        (["cat", "cat", "dog"], "repeated: cat"),
        (["cat", "  "], "must have a visible character"),
        (["cat", ""], "must have a visible character"),
        (["cat", "x" * 101], "at most 100 characters"),
        (["cat", " dog"], "start or end with spaces"),
        (["cat", "do\x1fg"], "U+001F (a control character)"),
        (["cat", "c\u200bat"], "U+200B (ZERO WIDTH SPACE)"),
        (["caf\u00e9", "cafe\u0301"], "repeated: caf\u00e9"),
    ],
)
def test_bad_label_sets_are_refused_with_the_reason(app, labels, words):
    """The domain function gives the reasons; the API refuses the same sets by its schema (next test)."""
    from storage.errors import InvalidInput
    from storage.projects import create_project

    with app.state.runtime.db.session() as session, pytest.raises(InvalidInput) as raised:
        create_project(session, name="p", labels=labels)
    assert raised.value.code == "invalid_labels"
    assert words in raised.value.message


@pytest.mark.parametrize(
    "labels", [["only-one"], [f"l{i}" for i in range(1001)], ["cat", "cat"], ["cat", "  "], ["cat", "x" * 101]]
)
def test_the_api_refuses_bad_label_sets_with_a_422_naming_labels(client, admin, labels):
    response = client.post("/api/v1/projects", json={"name": "p", "labels": labels}, headers=admin.headers)
    assert response.status_code == 422
    assert "label" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "bad",
    [{"overlap_rate": 1.5}, {"overlap_k": 1}, {"overlap_k": "many"}, {"no_such_setting": 1}],
)
def test_bad_settings_are_refused_naming_the_setting(client, admin, bad):
    response = client.post(
        "/api/v1/projects", json={"name": "p", "labels": ["a", "b"], "settings": bad}, headers=admin.headers
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert next(iter(bad)) in error["message"]


def test_settings_can_be_changed_and_are_validated(client, admin):
    project = make_project(client, admin)
    url = f"/api/v1/projects/{project['id']}/settings"
    changed = client.patch(url, json={"settings": {"overlap_k": 5}}, headers=admin.headers)
    settings = {
        k: v
        for k, v in changed.json()["settings"].items()
        if k not in ("training", "mining", "monitoring", "distillation")
    }
    assert settings == {
        "overlap_rate": 0.1, "overlap_k": 5, "lease_minutes": 10, "gold_rate": 0.05,
        "auto_review": True, "review_posterior": 0.7, "review_max_labels": 5, "max_boxes": 500, "iou_threshold": 0.5,
        "box_quorum": None, "tight_iou": 0.75, "hotkeys": {}, "quality_report_interval_seconds": 60.0,
    }  # fmt: skip
    refused = client.patch(url, json={"settings": {"overlap_rate": -1}}, headers=admin.headers)
    assert refused.status_code == 422
    assert client.get(f"/api/v1/projects/{project['id']}", headers=admin.headers).json()["settings"]["overlap_k"] == 5


@pytest.mark.parametrize(
    ("hotkeys", "words"),
    [
        ({"cat": "cc"}, "one printable character"),
        ({"cat": " "}, "one printable character"),
        ({"cat": "a\n"}, "one printable character"),
        ({"cat": "s"}, "s skips and u undoes"),
        ({"cat": "U"}, "s skips and u undoes"),
        ({"cat": "c", "dog": "c"}, "given to several: c"),
        ({"zebra": "z"}, "no label named 'zebra'"),
    ],
)
def test_bad_hotkeys_are_refused_naming_the_label_and_the_rule(client, admin, hotkeys, words):
    project = make_project(client, admin)
    url = f"/api/v1/projects/{project['id']}/settings"
    refused = client.patch(url, json={"settings": {"hotkeys": hotkeys}}, headers=admin.headers)
    assert refused.status_code == 422, refused.text
    assert words in refused.json()["error"]["message"]
    created = client.post(
        "/api/v1/projects",
        json={"name": "k", "labels": ["cat", "dog"], "settings": {"hotkeys": hotkeys}},
        headers=admin.headers,
    )
    assert created.status_code == 422 and words in created.json()["error"]["message"]


def test_hotkeys_are_set_per_label_and_null_removes_one(client, admin):
    project = make_project(client, admin)
    url = f"/api/v1/projects/{project['id']}/settings"
    first = client.patch(url, json={"settings": {"hotkeys": {"cat": "c", "dog": "D"}}}, headers=admin.headers)
    assert first.json()["settings"]["hotkeys"] == {"cat": "c", "dog": "D"}
    second = client.patch(url, json={"settings": {"hotkeys": {"dog": None, "bird": "b"}}}, headers=admin.headers)
    assert second.json()["settings"]["hotkeys"] == {"cat": "c", "bird": "b"}


def test_changing_one_training_setting_keeps_the_others(client, admin):
    project = client.post("/api/v1/projects", json={"name": "t", "labels": ["a", "b"]}, headers=admin.headers).json()
    url = f"/api/v1/projects/{project['id']}/settings"
    first = client.patch(
        url, json={"settings": {"training": {"epochs": 5, "architecture": "resnet18"}}}, headers=admin.headers
    )
    assert first.status_code == 200, first.text
    second = client.patch(url, json={"settings": {"training": {"min_new_labels": 7}}}, headers=admin.headers)
    training = second.json()["settings"]["training"]
    assert (training["epochs"], training["architecture"], training["min_new_labels"]) == (5, "resnet18", 7)
    assert training["augmentation"]["rotate_degrees"] == 10.0
    cleared = client.patch(url, json={"settings": {"training": {"architecture": None}}}, headers=admin.headers)
    assert cleared.json()["settings"]["training"]["architecture"] is None
    refused = client.patch(url, json={"settings": {"training": {"architecture": "vgg"}}}, headers=admin.headers)
    assert refused.status_code == 422 and "architecture" in refused.text


def test_project_names_are_unique(client, admin):
    make_project(client, admin, name="same")
    again = client.post("/api/v1/projects", json={"name": "same", "labels": ["a", "b"]}, headers=admin.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "project_exists"


def test_members_see_their_projects_and_outsiders_get_404(client, admin, engineer, annotator):
    shared = make_project(client, admin, engineer)
    make_project(client, admin)
    listed = client.get("/api/v1/projects", headers=engineer.headers).json()
    assert [p["id"] for p in listed] == [shared["id"]]
    assert len(client.get("/api/v1/projects", headers=admin.headers).json()) == 2
    assert client.get("/api/v1/projects", headers=annotator.headers).json() == []
    hidden = client.get(f"/api/v1/projects/{shared['id']}", headers=annotator.headers)
    missing = client.get("/api/v1/projects/987654", headers=annotator.headers)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "project_not_found"


def test_admins_add_and_remove_members(client, admin, annotator):
    project = make_project(client, admin)
    url = f"/api/v1/projects/{project['id']}/members"
    assert client.post(url, json={"user_id": annotator.id}, headers=admin.headers).status_code == 201
    assert client.post(url, json={"user_id": annotator.id}, headers=admin.headers).status_code == 201  # idempotent
    assert [m["name"] for m in client.get(url, headers=annotator.headers).json()] == [annotator.name]
    assert client.delete(f"{url}/{annotator.id}", headers=admin.headers).status_code == 204
    assert client.get(f"/api/v1/projects/{project['id']}", headers=annotator.headers).status_code == 404
    assert client.delete(f"{url}/{annotator.id}", headers=admin.headers).status_code == 404
    assert client.post(url, json={"user_id": 99999}, headers=admin.headers).status_code == 404


def test_admins_create_users_whose_token_is_shown_once_and_works(client, admin, app):
    created = client.post("/api/v1/users", json={"name": "alice", "role": "engineer"}, headers=admin.headers)
    assert created.status_code == 201
    token = created.json()["token"]
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["name"] == "alice" and me["role"] == "engineer" and "token" not in me
    listed = client.get("/api/v1/users", headers=admin.headers).json()
    assert all("token" not in u for u in listed)
    duplicate = client.post("/api/v1/users", json={"name": "alice", "role": "engineer"}, headers=admin.headers)
    assert duplicate.status_code == 409
    bad_role = client.post("/api/v1/users", json={"name": "bob", "role": "owner"}, headers=admin.headers)
    assert bad_role.status_code == 422


def test_tokens_are_stored_only_as_hashes(client, admin, app):
    from sqlalchemy import select

    from storage.models import User

    with app.state.runtime.db.session() as session:
        stored = session.scalar(select(User.token_hash).where(User.name == admin.name))
    assert admin.token not in stored
    assert len(stored) == 64
