"""Health, Prometheus metrics, request ids and structured logs."""

from __future__ import annotations

import io
import json
import logging

from storage.logs import JsonFormatter
from tests import imagefactory as img
from tests.factories import make_project


def test_health_needs_no_token_and_reports_each_dependency(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "blob_store": "ok"}}


def test_health_reports_a_broken_blob_store_as_503(client, app):
    root = app.state.runtime.blobs.tmp
    root.chmod(0o500)  # the store can no longer write
    try:
        response = client.get("/health")
    finally:
        root.chmod(0o700)
    if response.status_code == 200:  # running as root: permissions do not bind, break it another way
        app.state.runtime.blobs.tmp = root / "missing" / "deeper"
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["blob_store"].startswith("failing")
    assert response.json()["checks"]["database"] == "ok"


def test_metrics_count_requests_by_route_and_images_by_outcome(client, admin):
    project = make_project(client, admin)
    client.post(
        f"/api/v1/projects/{project['id']}/images",
        files=[("files", ("a.png", img.png())), ("files", ("b.png", b"junk"))],
        headers=admin.headers,
    )
    text = client.get("/metrics", headers=admin.headers).text
    assert (
        'labelwheel_http_requests_total{method="POST",route="/api/v1/projects/{project_id}/images",status="201"}'
        in text
    )
    assert 'labelwheel_http_request_duration_seconds_count{method="POST",route="/api/v1/projects"}' in text
    assert 'labelwheel_images_ingested_total{outcome="accepted"}' in text
    assert 'labelwheel_images_ingested_total{outcome="rejected"}' in text


def test_every_response_carries_a_request_id_and_keeps_the_callers(client):
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/health", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"


def test_logs_are_json_lines_with_the_request_id(client):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("labelwheel.http")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        client.get("/health", headers={"X-Request-ID": "trace-43"})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["message"] == "GET /health 200"
    assert line["request_id"] == "trace-43"
    assert line["route"] == "/health" and line["status"] == 200 and line["ms"] >= 0


def test_errors_are_json_with_a_code_and_never_a_traceback(client, admin):
    unknown = client.get("/api/v1/nowhere", headers=admin.headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    wrong_method = client.put("/api/v1/projects", headers=admin.headers)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    bad_json = client.post(
        "/api/v1/projects", content=b"{not json", headers={**admin.headers, "Content-Type": "application/json"}
    )
    assert bad_json.status_code == 422
    assert bad_json.json()["error"]["code"] == "invalid_request"
    assert "Traceback" not in bad_json.text
