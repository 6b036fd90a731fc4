"""Health, Prometheus metrics, request ids and structured logs."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from flywheel.jobs.lanes import LaneRecord, forget_lanes, record_lanes
from storage.logs import JsonFormatter
from storage.models import WorkerLane, utcnow
from tests import imagefactory as img
from tests.factories import make_project


def test_health_needs_no_token_and_reports_each_dependency(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "blob_store": "ok"},
        "lanes": {"fast": {"status": "absent", "consumers": []}, "slow": {"status": "absent", "consumers": []}},
        "fallback": {},
    }


@pytest.mark.postgres
def test_health_reports_each_job_lane_and_is_degraded_while_one_has_no_live_consumer(client, app):
    """The rows a worker's supervisor writes (tests/test_worker.py runs the real one), read back by /health."""
    db, stale = app.state.runtime.db, app.state.runtime.settings.job_stale_seconds

    def lanes() -> tuple[int, dict]:
        response = client.get("/health")
        body = response.json()
        assert body["status"] == ("ok" if response.status_code == 200 else "degraded")
        return response.status_code, {name: lane["status"] for name, lane in body["lanes"].items()} | body

    started = utcnow()
    fast, slow = LaneRecord("fast", "one:11", started), LaneRecord("slow", "one:12", started)
    record_lanes(db, supervisor="one:10", lanes=[fast, slow], stale_seconds=stale)
    code, body = lanes()
    assert code == 200 and body["fast"] == body["slow"] == "up"
    (consumer,) = body["lanes"]["slow"]["consumers"]
    assert consumer["supervisor"] == "one:10" and consumer["worker"] == "one:12" and consumer["restarts"] == 0

    died = replace(slow, worker=None, last_exit="killed by SIGKILL", last_exit_at=utcnow())
    record_lanes(db, supervisor="one:10", lanes=[fast, died], stale_seconds=stale)  # waiting for its restart
    code, body = lanes()
    assert code == 503 and body["fast"] == "up" and body["slow"] == "down"
    assert body["lanes"]["slow"]["consumers"][0]["last_exit"] == "killed by SIGKILL"

    restarted = replace(died, worker="one:13", started_at=utcnow(), restarts=1)
    record_lanes(db, supervisor="one:10", lanes=[fast, restarted], stale_seconds=stale)
    code, body = lanes()
    assert code == 200 and body["slow"] == "up"
    assert body["lanes"]["slow"]["consumers"][0]["restarts"] == 1

    with db.session() as session:  # the whole worker was killed: its heartbeats stopped
        session.execute(update(WorkerLane).values(heartbeat_at=utcnow() - timedelta(seconds=stale + 1)))
    code, body = lanes()
    assert code == 503 and body["fast"] == body["slow"] == "down"

    # A worker on another machine consumes the slow lane: up again, and the dead worker's slow row is dropped.
    record_lanes(db, supervisor="two:20", lanes=[LaneRecord("slow", "two:21", utcnow())], stale_seconds=stale)
    code, body = lanes()
    assert code == 503 and body["slow"] == "up" and body["fast"] == "down"
    assert [c["supervisor"] for c in body["lanes"]["slow"]["consumers"]] == ["two:20"]

    forget_lanes(db, supervisor="one:10")  # stopped on purpose: nobody is meant to consume the fast lane
    code, body = lanes()
    assert code == 200 and body["fast"] == "absent" and body["slow"] == "up"


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
