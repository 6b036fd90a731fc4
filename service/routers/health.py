from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flywheel.jobs.lanes import LaneStatus, lane_health
from service.deps import CurrentUser, RuntimeDep
from service.schemas.common import ERROR_RESPONSES
from service.schemas.health import HealthRead, LaneRead

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    summary="Database and blob store reachable, and every job lane consumed (no token needed)",
    response_model=HealthRead,
    responses={503: {"model": HealthRead, "description": "a store is failing or a job lane is down"}},
)
def health(runtime: RuntimeDep) -> JSONResponse:
    """Answers 200 with `{"status": "ok", "checks": {...}}` when the database and the blob store both answer, else
    503 with `"degraded"` and the failing check's error type. A project whose serving model cannot answer (an
    older one does meanwhile) makes the status `degraded` with a 200, naming the project and why in `fallback`.
    Needs no token, for load balancers and container health checks."""
    checks = {}
    for name, probe in (("database", runtime.db.ping), ("blob_store", runtime.blobs.check)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # a health check reports any failure instead of raising it
            checks[name] = f"failing: {type(exc).__name__}"
    lanes = []
    if checks["database"] == "ok":
        try:
            with runtime.db.read_session() as session:
                lanes = lane_health(session, stale_seconds=runtime.settings.job_stale_seconds)
        except Exception as exc:  # e.g. a PostgreSQL schema not upgraded yet (`labelwheel db upgrade`)
            checks["job_lanes"] = f"failing: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values()) and all(lane.status != LaneStatus.down for lane in lanes)
    fallback = runtime.predictor.falling_back()
    body = HealthRead(
        status="ok" if healthy and not fallback else "degraded",
        checks=checks,
        lanes={lane.lane: LaneRead.model_validate(asdict(lane)) for lane in lanes},
        fallback=fallback,
    )
    # A model answering in place of a broken one is degraded service, not an outage: load balancers keep sending.
    return JSONResponse(body.model_dump(mode="json"), 200 if healthy else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={**ERROR_RESPONSES, 200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
def metrics(_: CurrentUser) -> Response:
    """Prometheus text format: request counts and latencies per route, images ingested per outcome. Needs a token of
    any role."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
