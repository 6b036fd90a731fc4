"""labelwheel as a Label Studio ML backend: the protocol under ``/labelstudio/{project_id}``, and the admin's
link to the Label Studio server under ``/api/v1/projects/{project_id}/labelstudio``.

Label Studio authenticates with HTTP basic auth (user ``labelstudio``, the project's secret), which its Model
settings send with every call; an unknown project and a wrong secret both answer 401.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from flywheel.labelstudio import backend as protocol
from flywheel.labelstudio.events import HANDLED, apply_event
from flywheel.labelstudio.links import BASIC_AUTH_USER, connect_project, get_link, link_counts, secret_matches
from service.deps import AdminProject, AdminProjectForWrite, ReadSessionDep, Runtime, RuntimeDep, SessionDep
from service.schemas.common import ERROR_RESPONSES, ProjectId
from service.schemas.labelstudio import (
    LabelStudioConnect,
    LabelStudioLinkCreated,
    LabelStudioLinkRead,
    PredictRequest,
    SetupRequest,
    TrainRequest,
)
from storage.errors import Unauthorized
from storage.models import LabelStudioLink

router = APIRouter(tags=["label studio"], responses=ERROR_RESPONSES)
_basic = HTTPBasic(auto_error=False, description="User `labelstudio`, password: the project's secret.")


def linked_project(
    project_id: ProjectId, runtime: RuntimeDep, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> int:
    """The path's project, when the call carries its secret."""
    with runtime.db.read_session() as session:
        link = session.get(LabelStudioLink, project_id)
    if link is None or credentials is None or not secret_matches(link, credentials.password):
        raise Unauthorized(
            f"Label Studio must call /labelstudio/{project_id} with basic auth: user {BASIC_AUTH_USER!r}, password "
            "the project's secret (from `labelwheel labelstudio connect` or PUT "
            f"/api/v1/projects/{project_id}/labelstudio)",
            code="invalid_backend_auth",
        )
    return project_id


LinkedProject = Annotated[int, Depends(linked_project)]
BASE = "/labelstudio/{project_id}"


def _backend(runtime: Runtime) -> protocol.Backend:
    return protocol.Backend(db=runtime.db, blobs=runtime.blobs, limits=runtime.limits, predictor=runtime.predictor)


@router.get(BASE + "/health", summary="Label Studio's health check: {status: UP}")
@router.get(BASE, summary="As /health (the reference backend answers / too)")
@router.get(BASE + "/", include_in_schema=False)
def health(_: LinkedProject) -> dict[str, str]:
    """Label Studio's "Validate and save" calls this with the project's secret; `UP` means it was accepted."""
    return {"status": "UP", "model_class": "labelwheel"}


@router.post(BASE + "/setup", summary="The serving model's version (called often: one indexed query)")
def setup(project_id: LinkedProject, body: SetupRequest, runtime: RuntimeDep) -> dict[str, str]:
    """Checks the label config (once per distinct config) maps to the project, answers `{model_version}`."""
    return protocol.setup(_backend(runtime), project_id=project_id, schema=body.label_schema)


@router.post(BASE + "/predict", summary="One prediction per task, in order; score = labelwheel's queue priority")
def predict(project_id: LinkedProject, body: PredictRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """`{results: [{result: [choices], score, model_version}]}`; images are fetched once, from the configured
    Label Studio host only; a task pointing elsewhere gets an empty result with an `error`. No model yet: no
    results (Label Studio stores none and asks again)."""
    results = protocol.predict(
        _backend(runtime), project_id=project_id, tasks=body.tasks, label_config=body.label_config
    )
    return {"results": results}


def _apply(request: Request, project_id: int, payload: dict[str, Any]) -> None:
    """Apply the event after the answer, in arrival order (``EventQueue``); the flywheel hears of new labels."""
    runtime: Runtime = request.app.state.runtime

    def work() -> None:
        if apply_event(_backend(runtime), runtime.transport, project_id=project_id, payload=payload):
            runtime.notifier.labels_changed(project_id)

    request.app.state.labelstudio_events.submit(work)


@router.post(BASE + "/webhook", summary="Label Studio's events: annotations, deletions, Start Training")
def webhook(project_id: LinkedProject, payload: Annotated[dict[str, Any], Body()], request: Request) -> JSONResponse:
    """Answers at once (Label Studio waits inside its annotator's request) and applies the event after the answer:
    201 `{status: ok}` for annotation events and START_TRAINING, 200 `{status: Unknown event}` otherwise."""
    action = payload.get("action")
    if action not in HANDLED:
        return JSONResponse({"status": "Unknown event"}, status_code=200)
    _apply(request, project_id, payload)
    return JSONResponse({"result": {"action": action}, "status": "ok"}, status_code=201)


@router.post(BASE + "/train", status_code=status.HTTP_201_CREATED, summary="Legacy: start a training")
def train(project_id: LinkedProject, _: TrainRequest, request: Request) -> dict[str, Any]:
    """The legacy call sends every annotation; labelwheel has them from the webhook already and starts a training."""
    _apply(request, project_id, {"action": "START_TRAINING"})
    return {"result": {"action": "START_TRAINING"}, "status": "ok"}


@router.get(BASE + "/versions", summary="The project's model versions, newest first")
def versions(project_id: LinkedProject, runtime: RuntimeDep) -> dict[str, Any]:
    """`{versions: [...]}`: the `model-<id>` names Label Studio offers in its model version menu."""
    return protocol.versions(_backend(runtime), project_id=project_id)


@router.get(BASE + "/metrics", summary="As the reference backend: {}")
def metrics(_: LinkedProject) -> dict[str, Any]:
    """Empty, as the reference backend's: a model's metrics are on its card (`GET /api/v1/models/{id}`)."""
    return {}


def _read(request: Request, link: LabelStudioLink, counts: dict[str, int]) -> dict[str, Any]:
    backend_url = str(request.base_url).rstrip("/") + BASE.format(project_id=link.project_id)
    return {
        "url": link.url,
        "ls_project_id": link.ls_project_id,
        "backend_url": backend_url,
        "basic_auth_user": BASIC_AUTH_USER,
        "pushed_at": link.pushed_at,
        **counts,
    }


@router.put(
    "/api/v1/projects/{project_id}/labelstudio",
    summary="Connect the project to a Label Studio server (admin): answers the backend URL and its secret, once",
)
def connect(
    project: AdminProjectForWrite, body: LabelStudioConnect, session: SessionDep, request: Request
) -> LabelStudioLinkCreated:
    """Stores the Label Studio URL (images are fetched from there only) and API token; a new secret replaces the
    old one."""
    link, secret = connect_project(
        session, project=project, url=body.url, access_token=body.access_token, ls_project_id=body.ls_project_id
    )
    counts = link_counts(session, project_id=project.id)
    return LabelStudioLinkCreated(**_read(request, link, counts), basic_auth_password=secret)


@router.get("/api/v1/projects/{project_id}/labelstudio", summary="The project's Label Studio link and sync (admin)")
def link_status(project: AdminProject, session: ReadSessionDep, request: Request) -> LabelStudioLinkRead:
    """The linked Label Studio URL (never its token or the secret), the backend URL to paste into Label Studio,
    and how many of its tasks and annotations labelwheel holds."""
    link = get_link(session, project_id=project.id)
    return LabelStudioLinkRead(**_read(request, link, link_counts(session, project_id=project.id)))
