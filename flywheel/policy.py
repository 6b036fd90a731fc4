"""When the flywheel acts on its own: refresh the head (a small detector's heads) as labels arrive, retrain when
they have grown enough, re-rank the queue with each new champion.

Runs in the worker (a ``check_policy`` task sent when labels change, and every minute as a safety
net); the API process only sends the notice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flywheel.jobs.rows import create_job
from flywheel.jobs.transport import Transport
from flywheel.serving.detection import CENTERNET
from flywheel.serving.registry import champion, promote
from storage.db import Database, after_commit
from storage.models import (
    Annotation,
    DatasetSnapshot,
    Image,
    Job,
    JobKind,
    JobStatus,
    ModelKind,
    ModelVersion,
    Project,
    TaskType,
    utcnow,
)
from storage.projects import project_settings

logger = logging.getLogger(__name__)


def start_policy_jobs(db: Database, transport: Transport, *, project_id: int) -> list[JobKind]:
    """Start what the project's policy asks for now; returns the kinds of jobs it queued."""
    started: list[JobKind] = []
    with db.session() as session:
        project = session.get(Project, project_id)
        if project is None:
            return started
        detection = project.task_type is TaskType.detection
        policy = project_settings(project).training
        if policy.auto_refresh and _refresh_due(session, project_id, detection=detection):
            delay = _refresh_delay(session, project_id, policy.refresh_interval_seconds)
            not_before = utcnow() + timedelta(seconds=delay)
            create_job(
                session,
                project_id=project_id,
                kind=JobKind.refresh,
                transport=transport,
                params={"trigger": "labels", "not_before": not_before.isoformat()},
                delay_seconds=delay,
            )
            started.append(JobKind.refresh)
        if policy.auto_train:
            labeled = (
                session.scalar(
                    select(func.count()).where(
                        Image.project_id == project_id,
                        (Image.consensus_boxes if detection else Image.consensus_label).is_not(None),
                    )
                )
                or 0
            )
            last = _last_training_size(session, project_id)
            needed = max(policy.min_new_labels, math.ceil(policy.growth * last))
            if labeled - last >= needed:
                create_job(
                    session,
                    project_id=project_id,
                    kind=JobKind.train,
                    transport=transport,
                    params={"trigger": "policy", "previous": last},
                    delay_seconds=policy.debounce_seconds,
                )
                started.append(JobKind.train)
    return started


def make_champion(
    session: Session, *, model: ModelVersion, by_user: int | None, reason: str, transport: Transport
) -> ModelVersion:
    """Promote ``model`` (a training that passed the gate, a person's choice, or a rollback) and start what a new
    champion sets off: its embeddings, a mining pass, and a policy check so labels it has not seen get a
    refreshed head on top of it."""
    promoted = promote(session, model=model, by_user=by_user, reason=reason)
    start_champion_jobs(session, project_id=promoted.project_id, transport=transport)
    project_id = promoted.project_id
    after_commit(session, lambda: transport.enqueue_policy_check(project_id))
    return promoted


def start_champion_jobs(session: Session, *, project_id: int, transport: Transport) -> list[Job]:
    """What a new champion sets off, in this order on the slow lane: caching its embeddings, then (project
    setting ``mining.after_promotion``) a mining pass, so the queue is ranked by the model that now serves."""
    project = session.get_one(Project, project_id)
    # A detector serves from its ONNX file and gives its own embeddings: nothing to cache first.
    detection = project.task_type is TaskType.detection
    jobs = [] if detection else [create_job(session, project_id=project_id, kind=JobKind.embed, transport=transport)]
    if project_settings(project).mining.after_promotion:
        params = {"trigger": "promotion"}
        jobs.append(create_job(session, project_id=project_id, kind=JobKind.mine, transport=transport, params=params))
    return jobs


def start_export(session: Session, *, model: ModelVersion, transport: Transport) -> Job:
    """The job making a refreshed head's ONNX file and checkpoint, asked for by a download: the one already
    waiting or running for it, else a new one."""
    pending = session.scalars(
        select(Job).where(
            Job.project_id == model.project_id,
            Job.kind == JobKind.export,
            Job.status.in_([JobStatus.queued, JobStatus.running]),
        )
    )
    for job in pending:
        if (job.params or {}).get("model_id") == model.id:
            return job
    params = {"model_id": model.id}
    return create_job(session, project_id=model.project_id, kind=JobKind.export, transport=transport, params=params)


def _refresh_due(session: Session, project_id: int, *, detection: bool) -> bool:
    """True when a champion that can be refreshed exists (a detector: the small centre-point one), labels have
    arrived since its newest refresh, and no refresh is waiting."""
    best = champion(session, project_id=project_id)
    if best is None or (detection and best.architecture != CENTERNET):
        return False
    newest = session.scalar(select(func.max(Annotation.id)).where(Annotation.project_id == project_id))
    covered = session.scalar(
        select(func.max(ModelVersion.labels_through)).where(
            ModelVersion.project_id == project_id,
            (ModelVersion.id == best.id)
            | ((ModelVersion.parent_id == best.id) & (ModelVersion.kind == ModelKind.refresh)),
        )
    )
    waiting = session.scalar(
        select(Job.id)
        .where(Job.project_id == project_id, Job.kind == JobKind.refresh, Job.status == JobStatus.queued)
        .limit(1)
    )
    return newest is not None and newest > (covered or 0) and waiting is None


def _refresh_delay(session: Session, project_id: int, interval: float) -> float:
    """Seconds the next refresh waits: none after a quiet spell (a label is served by a model within about a
    second), else until ``interval`` after the previous refresh's start, so a stream of labels refreshes at most
    once per interval and a burst waits for one refresh, not one per label."""
    previous = session.scalars(
        select(Job.params)
        .where(Job.project_id == project_id, Job.kind == JobKind.refresh)
        .order_by(Job.id.desc())
        .limit(1)
    ).first()
    if not previous or "not_before" not in previous:
        return 0.0
    due = datetime.fromisoformat(previous["not_before"]) + timedelta(seconds=interval)
    return max(0.0, (due - utcnow()).total_seconds())


def _last_training_size(session: Session, project_id: int) -> int:
    """Labels the newest training covers, whatever became of it (so a failing training is not retried on every
    label, only after the labels have grown again): the labels it trained on when it got that far (labels that
    arrived while it waited to start count as trained on), else the labels counted when it was asked for."""
    job = session.scalars(
        select(Job)
        .where(Job.project_id == project_id, Job.kind == JobKind.train, Job.status != JobStatus.cancelled)
        .order_by(Job.id.desc())
        .limit(1)
    ).first()
    if job is None:
        return 0
    model_id = (job.result or {}).get("model_id")  # a skipped training names the model it would have repeated
    trained_on = session.scalar(
        select(DatasetSnapshot.item_count)
        .join(ModelVersion, ModelVersion.snapshot_id == DatasetSnapshot.id)
        .where((ModelVersion.job_id == job.id) | (ModelVersion.id == model_id))
        .limit(1)
    )
    return max(int((job.params or {}).get("labeled", 0)), trained_on or 0)


class LabelNotifier:
    """Tells the worker that a project's labels changed, at most once per interval per project.

    Called after a label commits; it only marks the project, so a submit does no queue I/O. A
    background thread sends the marks.
    """

    def __init__(self, transport: Transport, *, interval_seconds: float = 0.2) -> None:
        self._transport = transport
        self._interval = interval_seconds
        self._dirty: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def labels_changed(self, project_id: int) -> None:
        with self._lock:
            self._dirty.add(project_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="label-notifier", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                projects, self._dirty = self._dirty, set()
            for project_id in projects:
                try:
                    self._transport.enqueue_policy_check(project_id)
                except Exception:
                    logger.exception("could not notify the worker about project %s; the minute check will", project_id)
            time.sleep(self._interval)
