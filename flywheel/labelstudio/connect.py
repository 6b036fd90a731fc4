"""Turning an existing Label Studio project into a flywheel, with label-studio-sdk: read its config, import its
tasks' images and annotations, register labelwheel as its ML backend and webhook, turn on pre-filling; and push
fresh predictions when mining changed what should be labeled first.

Everything is idempotent: connecting again fetches only new tasks' images, stores only new answers, and updates
the backend and webhook registrations in place (with a new secret, since only its hash is kept).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.types import PredictionRequest
from sqlalchemy import select

from annotation.imports import ImportSummary, ImportTask, TaskRejected, store_tasks
from annotation.labelstudio_tasks import Target, target_from_config, task_answers
from flywheel.labelstudio.backend import Backend, priority_score
from flywheel.labelstudio.images import Source, task_images
from flywheel.labelstudio.links import BASIC_AUTH_USER, connect_project, get_link, link_counts, origin_of
from flywheel.serving.inference import model_version
from flywheel.serving.registry import serving_model
from storage.db import Database
from storage.errors import InvalidInput
from storage.models import Image, LabelStudioAnnotation, LabelStudioLink, LabelStudioTask, Project, utcnow
from storage.names import nfc
from storage.projects import create_project
from storage.users import find_user

TASK_BATCH = 100
PUSH_BATCH = 500
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]


@dataclass
class Connected:
    project_id: int
    project_created: bool
    backend_url: str
    tasks: int = 0
    images_held: int = 0
    refused: list[tuple[int, str, str]] = field(default_factory=list)  # (task id, code, message)
    answers: ImportSummary = field(default_factory=ImportSummary)
    ml_backend_id: int | None = None
    webhook_id: int | None = None


def client_for(url: str, api_key: str) -> LabelStudio:
    return LabelStudio(base_url=origin_of(url), api_key=api_key)


def config_labels(label_config: str) -> list[str]:
    """The classes of a config labelwheel can serve: one single-choice ``Choices`` over one ``Image``; InvalidInput
    saying why otherwise."""
    target = target_from_config(label_config, [])
    from label_studio_sdk.label_interface import LabelInterface

    (control,) = [c for c in LabelInterface(label_config).controls if c.name == target.from_name]
    others = [
        c.name
        for c in LabelInterface(label_config).controls
        if c.tag.lower() == "choices" and c.name != control.name and any(o.tag.lower() == "image" for o in c.objects)
    ]
    if others:
        raise InvalidInput(
            f"the config has several Choices over images ({control.name}, {', '.join(others)}): labelwheel learns one "
            "class per image, so it cannot tell which to serve",
            code="invalid_config",
        )
    if control.attr.get("choice") == "multiple":
        raise InvalidInput(
            f'Choices {control.name!r} has choice="multiple": labelwheel learns exactly one class per image',
            code="invalid_config",
        )
    if not control.labels:
        raise InvalidInput(f"Choices {control.name!r} has no Choice values", code="invalid_config")
    return list(control.labels)


def _project(session: Any, *, name: str, labels: list[str]) -> tuple[Project, bool]:
    project = session.scalar(select(Project).where(Project.name == nfc(name)))
    if project is None:
        return create_project(session, name=name, labels=labels), True
    missing = [label for label in labels if label not in project.labels]
    if missing:
        raise InvalidInput(
            f"project {name!r} has no labels {missing[:20]}, which the Label Studio config offers: connect a project "
            "with the same classes (or a new name, and it is created with them)",
            code="invalid_config",
        )
    return project, False


def _basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"{BASIC_AUTH_USER}:{secret}".encode()).decode()


def _tasks(ls: LabelStudio, ls_project_id: int) -> Iterator[dict[str, Any]]:
    task: Any
    for task in ls.tasks.list(project=ls_project_id, fields="all"):
        yield dict(task.model_dump(mode="json"))


def _batches(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def connect(
    backend: Backend,
    *,
    url: str,
    api_key: str,
    ls_project_id: int,
    project_name: str,
    backend_base_url: str,
    on_tasks: Callable[[int], None] | None = None,
) -> Connected:
    """Connect (or re-connect) a Label Studio project to a labelwheel project, created with its classes if new.

    labelwheel must be serving at ``backend_base_url`` (as Label Studio reaches it): Label Studio checks a new
    ML backend by calling its /health and /setup.
    """
    ls = client_for(url, api_key)
    ls_project = ls.projects.get(id=ls_project_id)
    label_config = ls_project.label_config or ""
    labels = config_labels(label_config)
    with backend.db.session() as session:
        project, created = _project(session, name=project_name, labels=labels)
        link, secret = connect_project(
            session, project=project, url=url, access_token=api_key, ls_project_id=ls_project_id
        )
        project_id, source = project.id, Source(link.url, link.access_token)
        target = target_from_config(label_config, list(project.labels))
        project_labels = list(project.labels)
    done = Connected(project_id, created, f"{backend_base_url.rstrip('/')}/labelstudio/{project_id}")
    for batch in _batches(_tasks(ls, ls_project_id), TASK_BATCH):
        _import_batch(backend, done, project_id=project_id, source=source, target=target, labels=project_labels,
                      tasks=batch)  # fmt: skip
        if on_tasks:
            on_tasks(len(batch))
    _register(ls, done, ls_project_id=ls_project_id, secret=secret)
    return done


def _import_batch(
    backend: Backend,
    done: Connected,
    *,
    project_id: int,
    source: Source,
    target: Target,
    labels: list[str],
    tasks: list[dict[str, Any]],
) -> None:
    done.tasks += len(tasks)
    found = task_images(
        db=backend.db,
        blobs=backend.blobs,
        limits=backend.limits,
        project_id=project_id,
        source=source,
        tasks=tasks,
        target=target,
    )
    parsed: list[ImportTask] = []
    for index, (task, image) in enumerate(zip(tasks, found, strict=True)):
        try:
            if isinstance(image, TaskRejected):
                raise image
            answers, _ = task_answers(task, target, labels)
        except TaskRejected as exc:
            done.refused.append((task.get("id", -1), exc.code, exc.message))
            continue
        done.images_held += 1
        parsed.append(ImportTask(index, task["id"], image, answers))
    store_tasks(backend.db, project_id=project_id, tasks=parsed, summary=done.answers)
    _remember_annotations(backend, project_id=project_id, tasks=tasks, found=found)


def _remember_annotations(
    backend: Backend, *, project_id: int, tasks: list[dict[str, Any]], found: list[int | TaskRejected]
) -> None:
    """Which labelwheel answer each Label Studio annotation is, for its deletion later."""
    with backend.db.session() as session:
        for task, image_id in zip(tasks, found, strict=True):
            if not isinstance(image_id, int):
                continue
            for annotation in task.get("annotations") or []:
                ls_id, by = annotation.get("id"), annotation.get("completed_by")
                user = find_user(session, name=f"ls-{by}") if isinstance(by, int) else None
                if not isinstance(ls_id, int) or user is None:
                    continue
                if session.get(LabelStudioAnnotation, (project_id, ls_id)) is not None:
                    continue
                session.add(
                    LabelStudioAnnotation(
                        project_id=project_id, ls_annotation_id=ls_id, image_id=image_id, annotator_id=user.id
                    )
                )


def _register(ls: LabelStudio, done: Connected, *, ls_project_id: int, secret: str) -> None:
    """labelwheel as the project's ML backend (basic auth) and as its annotation webhook; pre-filling on."""
    auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": BASIC_AUTH_USER, "basic_auth_pass": secret}
    ours = [m for m in ls.ml.list(project=ls_project_id) if (m.url or "").rstrip("/") == done.backend_url]
    if ours:
        backend = ls.ml.update(id=ours[0].id, project=ls_project_id, url=done.backend_url, **auth)  # type: ignore[arg-type]
    else:
        backend = ls.ml.create(project=ls_project_id, url=done.backend_url, title="labelwheel", **auth)  # type: ignore[arg-type]
    done.ml_backend_id = backend.id
    hook_url = done.backend_url + "/webhook"
    hooks = [w for w in ls.webhooks.list(project=ls_project_id) if w.url == hook_url]
    settings: dict[str, Any] = {
        "headers": {"Authorization": _basic(secret)},
        "send_payload": True,
        "send_for_all_actions": False,
        "actions": WEBHOOK_ACTIONS,
        "is_active": True,
    }
    if hooks:
        hook = ls.webhooks.update(id=hooks[0].id, url=hook_url, **settings)
    else:
        hook = ls.webhooks.create(url=hook_url, project=ls_project_id, **settings)
    done.webhook_id = hook.id
    ls.projects.update(id=ls_project_id, show_collab_predictions=True, evaluate_predictions_automatically=True)


@dataclass(frozen=True)
class Pushed:
    tasks: int
    model_version: str | None


def push_predictions(backend: Backend, *, project_id: int, ls: LabelStudio | None = None) -> Pushed:
    """Send Label Studio a fresh prediction for each held task whose score (queue priority) or model changed since
    the last push, so its sort by prediction score follows labelwheel's latest mining pass."""
    with backend.db.read_session() as session:
        link: LabelStudioLink = get_link(session, project_id=project_id)
        model = serving_model(session, project_id=project_id)
        if model is None or link.ls_project_id is None:
            return Pushed(0, None)
        project = session.get_one(Project, project_id)
        rows = session.execute(
            select(LabelStudioTask, Image)
            .join(Image, Image.id == LabelStudioTask.image_id)
            .where(LabelStudioTask.project_id == project_id)
        ).all()
        version = model_version(model)
        changed = [
            (task, image)
            for task, image in rows
            if task.pushed_model != version or task.pushed_score != priority_score(image.queue_tier, image.priority)
        ]
        if not changed:
            return Pushed(0, version)
        answers = backend.predictor.predict_stored(session, model=model, images=[image for _, image in changed])
    ls = ls or client_for(link.url, link.access_token)
    ls_project = ls.projects.get(id=link.ls_project_id)
    target = target_from_config(ls_project.label_config or "", list(project.labels))
    pushed: list[tuple[int, float]] = []
    requests: list[PredictionRequest] = []
    for (task, image), answer in zip(changed, answers, strict=True):
        score = priority_score(image.queue_tier, image.priority)
        result = {
            "from_name": target.from_name,
            "to_name": target.to_name,
            "type": "choices",
            "value": {"choices": [answer.label]},
            "score": answer.confidence,
        }
        requests.append(PredictionRequest(task=task.ls_task_id, result=[result], score=score, model_version=version))
        pushed.append((task.ls_task_id, score))
    for start in range(0, len(requests), PUSH_BATCH):  # one request per batch, not one per task
        ls.projects.import_predictions(id=link.ls_project_id, request=requests[start : start + PUSH_BATCH])
    with backend.db.session() as session:
        for ls_task_id, score in pushed:
            row = session.get_one(LabelStudioTask, (project_id, ls_task_id))
            row.pushed_score, row.pushed_model = score, version
        session.get_one(LabelStudioLink, project_id).pushed_at = utcnow()
    return Pushed(len(pushed), version)


def label_studio_status(db: Database, *, project_id: int) -> dict[str, str]:
    """What is connected, and Label Studio's side of it (its task count, its registration of labelwheel)."""
    with db.read_session() as session:
        link = get_link(session, project_id=project_id)
        counts = link_counts(session, project_id=project_id)
    lines = {
        "label studio": f"{link.url}, project {link.ls_project_id}",
        "tasks held": str(counts["tasks"]),
        "annotations received": str(counts["annotations"]),
        "predictions pushed": f"{counts['pushed']} tasks, last at {link.pushed_at or 'never'}",
    }
    if link.ls_project_id is None:
        return lines
    try:
        ls = client_for(link.url, link.access_token)
        ls_project = ls.projects.get(id=link.ls_project_id)
        path = f"/labelstudio/{project_id}"
        backends = [m for m in ls.ml.list(project=link.ls_project_id) if (m.url or "").rstrip("/").endswith(path)]
        hooks = [w for w in ls.webhooks.list(project=link.ls_project_id) if w.url.endswith(path + "/webhook")]
    except Exception as exc:  # any failure to ask is reported, not raised: the local half is still worth showing
        lines["label studio"] += f" (not reachable: {type(exc).__name__}: {str(exc)[:200]})"
        return lines
    total = ls_project.task_number or 0
    lines["label studio tasks"] = str(total)
    lines["ml backend"] = ", ".join(f"{m.id} {m.url} ({m.state})" for m in backends) or "not registered"
    lines["webhook"] = ", ".join(f"{w.id} {w.url}" for w in hooks) or "not registered"
    in_sync = counts["tasks"] >= total and bool(backends) and bool(hooks)
    lines["in sync"] = "yes" if in_sync else f"no: {max(total - counts['tasks'], 0)} tasks not held yet; connect again"
    return lines
