"""Label Studio's webhook events: its users' annotations become labelwheel annotations, "Start Training" starts
a training.

Label Studio waits for the answer inside the annotator's own request (1 s timeout, no queue without Redis), so the
route answers at once and calls ``apply_event`` after the answer is sent. Each Label Studio user is the annotator
``ls-<user id>`` (as the Label Studio import names them); an annotation arrives as an ``imported`` answer through
the import's own checks, so an update replaces the user's answer and a repeated event adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from annotation.annotations import withdraw_answer
from annotation.imports import ImportSummary, ImportTask, TaskRejected, store_tasks
from annotation.labelstudio_tasks import Target, task_answers
from flywheel.jobs.rows import create_job
from flywheel.jobs.transport import Transport
from flywheel.labelstudio.backend import Backend, project_target
from flywheel.labelstudio.images import Source, task_images, valid_id
from flywheel.labelstudio.links import get_link
from storage.errors import LabelwheelError
from storage.models import JobKind, LabelStudioAnnotation, Project, TaskType

log = logging.getLogger(__name__)

ANNOTATION_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
DELETE_EVENTS = frozenset({"ANNOTATION_DELETED", "ANNOTATIONS_DELETED"})
# What the reference backend answers 201 to; any other event gets 200 "Unknown event".
HANDLED = ANNOTATION_EVENTS | DELETE_EVENTS | {"START_TRAINING"}


class EventQueue:
    """Applies events one at a time, in arrival order, on a thread of its own, so the webhook's answer never waits
    for an event's work (nor, on a kept-alive connection, for the previous event's). Events still queued when the
    process stops are lost: Label Studio's export, read again by ``labelwheel labelstudio connect``, fills the gap.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="labelstudio-events")

    def submit(self, work: Callable[[], None]) -> None:
        self._pool.submit(self._run, work)

    @staticmethod
    def _run(work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # one event's failure must not stop the ones after it
            log.exception("a Label Studio event failed")

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every event submitted so far is applied."""
        self._pool.submit(lambda: None).result(timeout)


def apply_event(backend: Backend, transport: Transport, *, project_id: int, payload: dict[str, Any]) -> bool:
    """Apply one webhook event; True when the project's labels changed (the caller tells the flywheel)."""
    action = payload.get("action")
    try:
        if action == "START_TRAINING":
            with backend.db.session() as session:
                create_job(
                    session,
                    project_id=project_id,
                    kind=JobKind.train,
                    transport=transport,
                    params={"trigger": "labelstudio"},
                )
            return False
        if action in ANNOTATION_EVENTS:
            return store_annotation(backend, project_id=project_id, payload=payload)
        if action in DELETE_EVENTS:
            return delete_annotations(backend, project_id=project_id, payload=payload)
    except LabelwheelError as exc:
        log.warning("Label Studio event %s for project %s not applied: %s", action, project_id, exc.message)
    return False


def store_annotation(backend: Backend, *, project_id: int, payload: dict[str, Any]) -> bool:
    """Store the event's annotation as its user's answer on the task's image (fetched once from Label Studio)."""
    task, annotation = payload.get("task"), payload.get("annotation")
    if not isinstance(task, dict) or not isinstance(annotation, dict) or not valid_id(annotation.get("id")):
        log.warning("Label Studio annotation event for project %s without a task or an annotation id", project_id)
        return False
    config = payload.get("project", {}).get("label_config") if isinstance(payload.get("project"), dict) else None
    with backend.db.read_session() as session:
        project = session.get_one(Project, project_id)
        link = get_link(session, project_id=project_id)
        # Without the config in the payload, the results' own from_name/to_name say where the answer is.
        target = project_target(project, config) if config else Target()
        labels, detection = list(project.labels), project.task_type is TaskType.detection
    (found,) = task_images(
        db=backend.db,
        blobs=backend.blobs,
        limits=backend.limits,
        project_id=project_id,
        source=Source(link.url, link.access_token),
        tasks=[task],
        target=target,
    )
    try:
        if isinstance(found, TaskRejected):
            raise found
        answers, _ = task_answers({"annotations": [annotation]}, target, labels, detection=detection)
    except TaskRejected as exc:
        log.warning("Label Studio task %s of project %s not stored: %s", task.get("id"), project_id, exc.message)
        return False
    if not answers:
        return False  # a skip (was_cancelled) or an empty answer is no label
    summary = ImportSummary(tasks=1)
    store_tasks(backend.db, project_id=project_id, tasks=[ImportTask(0, task["id"], found, answers)], summary=summary)
    if summary.problems:
        log.warning("Label Studio task %s of project %s not stored: %s", task["id"], project_id, summary.problems[0])
        return False
    annotator_id = next(m.user_id for m in summary.annotators if m.name == answers[0].user_name)
    with backend.db.session() as session:
        row = session.get(LabelStudioAnnotation, (project_id, annotation["id"]))
        if row is None:
            session.add(
                LabelStudioAnnotation(
                    project_id=project_id, ls_annotation_id=annotation["id"], image_id=found, annotator_id=annotator_id
                )
            )
    return summary.annotations_imported > 0


def delete_annotations(backend: Backend, *, project_id: int, payload: dict[str, Any]) -> bool:
    """Withdraw the deleted annotations' answers (known by the ids the creation events carried)."""
    listed = payload.get("annotations")
    if not isinstance(listed, list):
        listed = [payload.get("annotation")]
    ids = [item["id"] for item in listed if isinstance(item, dict) and valid_id(item.get("id"))]
    changed = False
    with backend.db.session() as session:
        project = session.get_one(Project, project_id)
        for ls_id in ids:
            row = session.get(LabelStudioAnnotation, (project_id, ls_id))
            if row is not None:
                changed |= withdraw_answer(
                    session, project=project, image_id=row.image_id, annotator_id=row.annotator_id
                )
                session.delete(row)
    return changed
