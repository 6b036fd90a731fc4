"""Schemathesis fuzzes every operation of the OpenAPI schema: no input may produce a 5xx.

Each operation gets a bounded number of generated requests (valid and invalid), so the whole
run stays within a minute. Responses are also checked against the documented schema.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.app import create_app
from storage.models import Role
from storage.settings import load_settings
from tests import imagefactory as img
from tests.factories import make_user
from tests.test_access import ROUTES

EXAMPLES_PER_OPERATION = 100
# Whether uploaded bytes are an image, a label belongs to the project's label set (hotkeys name labels, one
# key each), or a string is a cron expression, is beyond what a schema can say: schema-valid requests are
# rightly refused there with a 422, so only the "valid data is accepted" check is left out for these
# operations (never the 5xx check).
DATA_DEPENDENT = {
    "POST /api/v1/projects",
    "PATCH /api/v1/projects/{project_id}/settings",
    "POST /api/v1/projects/{project_id}/images",
    "POST /api/v1/projects/{project_id}/annotations",
    "PUT /api/v1/projects/{project_id}/gold",
    "POST /api/v1/projects/{project_id}/import/labelstudio",
    "POST /api/v1/projects/{project_id}/import/coco",
    "POST /api/v1/projects/{project_id}/predict",
    "PUT /api/v1/projects/{project_id}/schedules",
    "PUT /api/v1/projects/{project_id}/labelstudio",
}


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    """An app on a real SQLite file with a project and an image for the fuzzer to hit."""
    app = create_app(load_settings(data_dir=tmp_path_factory.mktemp("fuzz")), migrate=True)
    client = TestClient(app)
    admin = make_user(app, "fuzz-admin", Role.admin)
    project = client.post("/api/v1/projects", json={"name": "fuzz", "labels": ["a", "b"]}, headers=admin.headers)
    client.post(
        f"/api/v1/projects/{project.json()['id']}/images",
        files=[("files", ("a.png", img.png()))],
        headers=admin.headers,
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app), admin
    app.state.runtime.db.dispose()


# test_access checks that ROUTES lists every operation in the schema, so nothing escapes the fuzzer.
@pytest.mark.parametrize("label", sorted(f"{method} {path}" for method, path in ROUTES))
def test_no_input_produces_a_server_error(fuzz_target, label):
    schema, admin = fuzz_target
    operation = schema.find_operation_by_label(label)
    excluded = [positive_data_acceptance] if label in DATA_DEPENDENT else []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    def fuzz(case):
        case.call_and_validate(headers=admin.headers, excluded_checks=excluded)

    fuzz()
