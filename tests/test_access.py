"""Every route, every role: who is allowed, who is refused, and that outsiders learn nothing.

The route list comes from the OpenAPI schema, so a new endpoint fails this test until its
access rule is written down here.
"""

from __future__ import annotations

import logging
import re

import pytest

from storage.models import ModelKind, ModelStatus, ModelVersion, Role
from tests import imagefactory as img
from tests.factories import make_project, make_user

pytestmark = pytest.mark.postgres  # behaviour that can differ by dialect

ADMIN, ENGINEER, ANNOTATOR = "admin", "engineer", "annotator"
EVERYONE = {ADMIN, ENGINEER, ANNOTATOR}

# (method, path) -> (roles allowed when a member of the project, request arguments)
ROUTES: dict[tuple[str, str], tuple[set[str], dict]] = {
    ("GET", "/health"): (EVERYONE, {}),
    ("GET", "/metrics"): (EVERYONE, {}),
    ("POST", "/api/v1/users"): ({ADMIN}, {"json": {"name": "new-user", "role": "annotator"}}),
    ("GET", "/api/v1/users"): ({ADMIN}, {}),
    ("GET", "/api/v1/users/me"): (EVERYONE, {}),
    ("POST", "/api/v1/users/{user_id}/token"): ({ADMIN}, {}),
    ("POST", "/api/v1/projects"): ({ADMIN}, {"json": {"name": "new-project", "labels": ["a", "b"]}}),
    ("GET", "/api/v1/projects"): (EVERYONE, {}),
    ("GET", "/api/v1/projects/{project_id}"): (EVERYONE, {}),
    ("PATCH", "/api/v1/projects/{project_id}/settings"): ({ADMIN}, {"json": {"settings": {"overlap_k": 4}}}),
    ("GET", "/api/v1/projects/{project_id}/members"): (EVERYONE, {}),
    ("POST", "/api/v1/projects/{project_id}/members"): ({ADMIN}, {"json": {"user_id": "{spare_id}"}}),
    ("DELETE", "/api/v1/projects/{project_id}/members/{user_id}"): ({ADMIN}, {}),
    ("POST", "/api/v1/projects/{project_id}/images"): ({ADMIN, ENGINEER}, {"files": "one-png"}),
    ("GET", "/api/v1/projects/{project_id}/images"): (EVERYONE, {}),
    ("GET", "/api/v1/images/{image_id}"): (EVERYONE, {}),
    ("GET", "/api/v1/images/{image_id}/content"): (EVERYONE, {}),
    ("GET", "/api/v1/images/{image_id}/thumbnail"): (EVERYONE, {}),
    ("GET", "/api/v1/projects/{project_id}/tasks/next"): (EVERYONE, {}),
    ("POST", "/api/v1/projects/{project_id}/tasks/{image_id}/skip"): (EVERYONE, {}),
    ("POST", "/api/v1/projects/{project_id}/annotations"): (
        EVERYONE,
        {"json": {"image_id": "{image_id}", "label": "cat"}},
    ),
    ("GET", "/api/v1/projects/{project_id}/annotations"): (EVERYONE, {}),
    ("GET", "/api/v1/projects/{project_id}/images/{image_id}/annotations"): (EVERYONE, {}),
    ("GET", "/api/v1/projects/{project_id}/progress"): (EVERYONE, {}),
    ("GET", "/api/v1/projects/{project_id}/labels"): ({ADMIN, ENGINEER}, {}),
    ("PUT", "/api/v1/projects/{project_id}/gold"): ({ADMIN}, {"json": {"image_id": "{image_id}", "label": "dog"}}),
    ("DELETE", "/api/v1/projects/{project_id}/gold/{image_id}"): ({ADMIN}, {}),
    ("GET", "/api/v1/projects/{project_id}/gold/scores"): ({ADMIN, ENGINEER}, {}),
    ("POST", "/api/v1/projects/{project_id}/review"): (
        {ADMIN, ENGINEER},
        {"json": {"image_ids": ["{image_id}"], "reason": "check it"}},
    ),
    ("GET", "/api/v1/projects/{project_id}/agreement"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/annotators"): ({ADMIN, ENGINEER}, {}),
    ("POST", "/api/v1/projects/{project_id}/annotators/{user_id}/exclusion"): ({ADMIN}, {"json": {"reason": "spam"}}),
    ("DELETE", "/api/v1/projects/{project_id}/annotators/{user_id}/exclusion"): ({ADMIN}, {}),
    ("GET", "/api/v1/projects/{project_id}/exclusions"): ({ADMIN, ENGINEER}, {}),
    ("POST", "/api/v1/projects/{project_id}/consensus"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/consensus/weak"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/label-issues"): ({ADMIN, ENGINEER}, {}),
    ("POST", "/api/v1/projects/{project_id}/label-issues/relabel"): (
        {ADMIN, ENGINEER},
        {"json": {"image_ids": ["{image_id}"]}},
    ),
    ("GET", "/api/v1/projects/{project_id}/export"): ({ADMIN, ENGINEER}, {}),
    ("POST", "/api/v1/projects/{project_id}/import/labelstudio"): (
        {ADMIN},
        {"multipart": [("export", ("export.json", b'[{"data": {"image": "c.png"}}]')), ("files", "c.png")]},
    ),
    ("POST", "/api/v1/projects/{project_id}/import/coco"): (
        {ADMIN},
        {"multipart": [("coco", ("coco.json", b'{"images": [], "annotations": [], "categories": []}'))]},
    ),
    ("POST", "/api/v1/projects/{project_id}/jobs"): ({ADMIN, ENGINEER}, {"json": {"kind": "train"}}),
    ("GET", "/api/v1/projects/{project_id}/jobs"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/jobs/{job_id}"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/schedules"): ({ADMIN, ENGINEER}, {}),
    ("PUT", "/api/v1/projects/{project_id}/schedules"): ({ADMIN, ENGINEER}, {"json": {"mine": "0 * * * *"}}),
    ("DELETE", "/api/v1/jobs/{job_id}"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/models"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/models/champion"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/models/{model_id}"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/models/{model_id}/download"): ({ADMIN, ENGINEER}, {}),
    ("POST", "/api/v1/models/{model_id}/promote"): ({ADMIN, ENGINEER}, {}),
    ("POST", "/api/v1/projects/{project_id}/predict"): ({ADMIN, ENGINEER}, {"files": "one-png"}),
    ("GET", "/api/v1/projects/{project_id}/snapshots"): ({ADMIN, ENGINEER}, {}),
    ("POST", "/api/v1/projects/{project_id}/snapshots"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/snapshots/{snapshot_id}"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/snapshots/{snapshot_id}/archive"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/drift"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/overview"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/queue"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/learning-curve"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/deployments"): ({ADMIN, ENGINEER}, {}),
    ("GET", "/api/v1/projects/{project_id}/predictions/per-day"): ({ADMIN, ENGINEER}, {}),
    ("PUT", "/api/v1/models/{model_id}/deployment"): ({ADMIN, ENGINEER}, {"json": {"mode": None}}),
    ("PUT", "/api/v1/projects/{project_id}/labelstudio"): (
        {ADMIN},
        {"json": {"url": "http://127.0.0.1:9", "access_token": "t"}},
    ),
    ("GET", "/api/v1/projects/{project_id}/labelstudio"): ({ADMIN}, {}),
}

# Label Studio's ML-backend protocol: basic auth with the project's secret, never an API token.
BACKEND_ROUTES = {
    ("GET", "/labelstudio/{project_id}"): {},
    ("GET", "/labelstudio/{project_id}/health"): {},
    ("POST", "/labelstudio/{project_id}/setup"): {"json": {"project": "1.1"}},
    ("POST", "/labelstudio/{project_id}/predict"): {"json": {"tasks": [], "label_config": "<View/>"}},
    ("POST", "/labelstudio/{project_id}/webhook"): {"json": {"action": "PROJECT_UPDATED"}},
    ("POST", "/labelstudio/{project_id}/train"): {"json": {}},
    ("GET", "/labelstudio/{project_id}/versions"): {},
    ("GET", "/labelstudio/{project_id}/metrics"): {},
}

PUBLIC = {("GET", "/health")}


def add_model(app, project_id: int) -> int:
    """A champion model row with no files behind it: downloads and predictions answer 409, past the access checks."""
    with app.state.runtime.db.session() as session:
        model = ModelVersion(
            project_id=project_id,
            kind=ModelKind.full,
            status=ModelStatus.champion,
            architecture="small_cnn",
            input_size=32,
            labels=["cat", "dog", "bird"],
            hyperparameters={},
            seed=0,
        )
        session.add(model)
        session.flush()
        return model.id


def test_the_access_table_covers_every_route_in_the_api(app):
    operations = {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert operations == set(ROUTES) | set(BACKEND_ROUTES)


def test_every_route_is_reached_by_its_own_paths(client, caplog):
    """The labeling routes are matched first (service/app.py, for speed): no route may shadow another's paths."""
    with caplog.at_level(logging.INFO, logger="labelwheel.http"):
        for method, path in sorted(set(ROUTES) | set(BACKEND_ROUTES)):
            caplog.clear()
            client.request(method, re.sub(r"\{\w+\}", "7", path))
            assert [r.fields["route"] for r in caplog.records] == [path], (method, path)


@pytest.mark.parametrize("route", sorted(BACKEND_ROUTES), ids=lambda r: f"{r[0]} {r[1]}")
def test_backend_routes_take_the_project_secret_and_no_token(client, admin, route):
    method, path = route
    project = make_project(client, admin)
    other = make_project(client, admin)
    link = {"url": "http://127.0.0.1:9", "access_token": "t"}
    secret = client.put(f"/api/v1/projects/{project['id']}/labelstudio", json=link, headers=admin.headers).json()
    other_secret = client.put(f"/api/v1/projects/{other['id']}/labelstudio", json=link, headers=admin.headers).json()
    url = path.format(project_id=project["id"])

    def call(auth=None, headers=None):
        return client.request(method, url, auth=auth, headers=headers, **BACKEND_ROUTES[route])

    for refused in (
        call(),
        call(headers=admin.headers),
        call(auth=("labelstudio", "wrong")),
        call(auth=("labelstudio", other_secret["basic_auth_password"])),
        client.request(method, path.format(project_id=99999), auth=("labelstudio", "x"), **BACKEND_ROUTES[route]),
    ):
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_backend_auth"
    allowed = call(auth=("labelstudio", secret["basic_auth_password"]))
    assert allowed.status_code < 500 and allowed.status_code not in {401, 403, 404}, allowed.text


@pytest.mark.parametrize("route", sorted(ROUTES), ids=lambda r: f"{r[0]} {r[1]}")
def test_route_allows_and_refuses_by_role_and_membership(client, app, admin, route):
    method, path = route
    allowed, arguments = ROUTES[route]
    engineer = make_user(app, "member-engineer", Role.engineer)
    annotator = make_user(app, "member-annotator", Role.annotator)
    outsider = make_user(app, "outsider", Role.engineer)
    spare = make_user(app, "spare", Role.annotator)
    project = make_project(client, admin, engineer, annotator, spare)
    uploaded = client.post(
        f"/api/v1/projects/{project['id']}/images", files=[("files", ("a.png", img.png()))], headers=admin.headers
    )
    image_id = uploaded.json()["files"][0]["image_id"]
    job = client.post(f"/api/v1/projects/{project['id']}/jobs", json={"kind": "embed"}, headers=admin.headers)
    model_id = add_model(app, project["id"])
    snapshot = client.post(f"/api/v1/projects/{project['id']}/snapshots", headers=admin.headers)
    url = path.format(
        project_id=project["id"],
        image_id=image_id,
        user_id=spare.id,
        job_id=job.json()["id"],
        model_id=model_id,
        snapshot_id=snapshot.json()["id"],
    )

    def call(headers):
        kwargs = {}
        if "json" in arguments:
            ids = {"{spare_id}": spare.id, "{image_id}": image_id}

            def fill(value):
                if isinstance(value, list):
                    return [fill(v) for v in value]
                return ids.get(value, value) if isinstance(value, str) else value

            kwargs["json"] = {k: fill(v) for k, v in arguments["json"].items()}
        if arguments.get("files"):
            kwargs["files"] = [("files", ("b.png", img.png(color=(1, 2, 3))))]
        if "multipart" in arguments:  # a named image part becomes a real PNG under that name
            kwargs["files"] = [
                (field, (value, img.png(color=(4, 5, 6))) if isinstance(value, str) else value)
                for field, value in arguments["multipart"]
            ]
        return client.request(method, url, headers=headers, **kwargs)

    if route == ("GET", "/api/v1/projects/{project_id}/tasks/next"):
        # A champion whose files are not there yet gives no pre-label, never an error.
        served = call(annotator.headers)
        assert served.status_code == 200 and served.json()["prelabel"] is None, served.text
        client.post(f"/api/v1/projects/{project['id']}/tasks/{image_id}/skip", headers=annotator.headers)
    anonymous = call({})
    if route in PUBLIC:
        assert anonymous.status_code == 200
    else:
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.json()["error"]["code"] == "missing_token"

    scoped = any(f"{{{name}}}" in path for name in ("project_id", "image_id", "job_id", "model_id", "snapshot_id"))
    if scoped:
        response = call(outsider.headers)
        assert response.status_code == 404, f"outsider on {method} {url}: {response.text}"

    # The admin goes last: some allowed calls change state (removing the spare member).
    for role, account in ((ENGINEER, engineer), (ANNOTATOR, annotator), (ADMIN, admin)):
        response = call(account.headers)
        if role in allowed:
            # Allowed means past the access checks: the action itself may still answer 409 or 422.
            assert response.status_code not in {401, 403, 404}, f"{role} on {method} {url}: {response.text}"
            assert response.status_code < 500
        else:
            assert response.status_code == 403, f"{role} on {method} {url}: {response.text}"
            assert response.json()["error"]["code"] == "forbidden"
