"""Import of a Label Studio JSON export: its images through the normal ingest, its choices as annotations.

Tasks name their image as a ``/data/upload/...`` path or a URL. Nothing is ever fetched (URL
import is a classic server-side request forgery hole in labeling tools): the image must be among
the uploaded files, matched by the content hash in ``meta.sha256`` (labelwheel's own exports
carry it) or by file name, with or without the ``xxxxxxxx-`` prefix Label Studio gives uploads.

Each Label Studio user becomes an annotator ``ls-<e-mail local part or id>``; their choices become
``imported`` annotations, their skips (``was_cancelled``) nothing. Labels outside the project's
label set are refused per task. Importing the same export again adds nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import IO, Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from annotation.consensus import refresh_consensus
from annotation.curation import set_gold
from annotation.labelstudio_tasks import (
    Label,
    Target,
    TaskRejected,
    image_reference,
    meta_gold,
    meta_sha256,
    read_export,
    reference_names,
    target_from_config,
    task_labels,
)
from annotation.queue import requeue_for_team
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import Conflict
from storage.ingest import Candidate, Ingestor, IngestResult, Limits, Outcome, expand_upload
from storage.models import (
    Annotation,
    AnnotationOrigin,
    Assignment,
    AssignmentStatus,
    Image,
    ImageSource,
    Project,
    Role,
    utcnow,
)
from storage.projects import add_member, require_classification
from storage.users import create_user, find_user, get_user_by_name

MAX_PROBLEMS = 1000
TASK_BATCH = 200


@dataclass(frozen=True)
class TaskProblem:
    task_index: int
    task_id: Any
    code: str
    message: str
    details: Any = None


@dataclass(frozen=True)
class AnnotatorMapping:
    labelstudio: str
    user_id: int
    name: str
    created: bool


@dataclass
class ImportSummary:
    tasks: int = 0
    tasks_imported: int = 0
    tasks_rejected: int = 0
    images_accepted: int = 0
    images_duplicate: int = 0
    images_rejected: int = 0
    unreferenced_files: int = 0
    annotations_imported: int = 0
    annotations_existing: int = 0
    annotations_cancelled: int = 0
    predictions_ignored: int = 0
    gold_set: int = 0
    users_created: int = 0
    annotators: list[AnnotatorMapping] = field(default_factory=list)
    rejected_files: list[IngestResult] = field(default_factory=list)
    problems: list[TaskProblem] = field(default_factory=list)
    problems_total: int = 0

    def problem(self, problem: TaskProblem) -> None:
        self.problems_total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    @property
    def changed(self) -> bool:
        return bool(self.images_accepted or self.annotations_imported or self.gold_set)


@dataclass
class _Task:
    index: int
    id: Any
    image_id: int
    labels: list[Label]
    gold_label: str | None


# --- reading the export --------------------------------------------------------------------------


# --- matching images ----------------------------------------------------------------------------


class _Files:
    """The ingested files, looked up by content hash or base name."""

    def __init__(self, results: Iterable[IngestResult], existing_by_sha: dict[str, int]) -> None:
        self.by_sha: dict[str, IngestResult] = {}
        self.by_name: dict[str, list[IngestResult]] = defaultdict(list)
        self.used: set[int] = set()
        self.existing_by_sha = existing_by_sha
        for result in results:
            self.by_name[PurePosixPath(result.name.replace("\\", "/")).name].append(result)
            if result.sha256 and result.image_id is not None:
                self.by_sha.setdefault(result.sha256, result)

    def _use(self, result: IngestResult) -> int:
        if result.image_id is None:
            raise TaskRejected(
                "invalid_image", f"the image file {result.name!r} was rejected: {result.reason}", {"code": result.code}
            )
        self.used.add(id(result))
        return result.image_id

    def image_id(self, task: dict[str, Any], reference: str | None) -> int:
        sha = meta_sha256(task)
        if sha and sha in self.by_sha:
            return self._use(self.by_sha[sha])
        if sha and sha in self.existing_by_sha:
            return self.existing_by_sha[sha]
        for name in reference_names(reference or ""):
            matches = self.by_name.get(name, [])
            if len({m.sha256 or m.name for m in matches}) > 1:
                raise TaskRejected(
                    "ambiguous_image",
                    f"several different uploaded files are named {name!r}; upload only the one this task shows",
                    {"files": [m.name for m in matches[:10]]},
                )
            if matches:
                return self._use(matches[0])
        shown = (reference or "")[:300]
        raise TaskRejected(
            "unmatched_image",
            f"no uploaded file matches the task's image {shown!r} (by file name or sha256): upload the file "
            "itself; labelwheel never fetches URLs (server-side request forgery)",
            {"image": shown},
        )

    def unreferenced(self) -> int:
        return sum(
            1 for results in self.by_name.values() for r in results if r.image_id is not None and id(r) not in self.used
        )


# --- storing annotations ------------------------------------------------------------------------


class _Users:
    """Label Studio users mapped to labelwheel annotators, found or created once per import."""

    def __init__(self, summary: ImportSummary) -> None:
        self.ids: dict[str, int] = {}
        self.summary = summary

    def resolve(self, session: Session, project: Project, labels: Iterable[Label]) -> None:
        for label in labels:
            if label.user_name in self.ids:
                continue
            user = find_user(session, name=label.user_name)
            created = False
            if user is None:
                try:
                    user, _ = create_user(session, name=label.user_name, role=Role.annotator)
                    created = True
                except Conflict:  # created by a concurrent import meanwhile
                    user = get_user_by_name(session, name=label.user_name)
            add_member(session, project=project, user_id=user.id)
            self.ids[label.user_name] = user.id
            self.summary.users_created += created
            self.summary.annotators.append(AnnotatorMapping(label.labelstudio_user, user.id, user.name, created))


def _chronological(labels: list[Label]) -> list[Label]:
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(labels, key=lambda label: (label.created_at or oldest, label.position))


def _store_batch(
    session: Session, *, project: Project, tasks: list[_Task], users: _Users, summary: ImportSummary
) -> None:
    """Add one batch of tasks' annotations in one transaction, then refresh each touched image."""
    users.resolve(session, project, (label for task in tasks for label in task.labels))
    image_ids = sorted({task.image_id for task in tasks})
    # Rows locked in id order, as a submission locks its image: on PostgreSQL the two cannot interleave.
    images = {
        image.id: image
        for image in session.scalars(select(Image).where(Image.id.in_(image_ids)).order_by(Image.id).with_for_update())
    }
    annotator_ids = sorted({users.ids[label.user_name] for task in tasks for label in task.labels})
    history: dict[tuple[int, int], list[Annotation]] = defaultdict(list)
    for annotation in session.scalars(
        select(Annotation)
        .where(Annotation.image_id.in_(image_ids), Annotation.annotator_id.in_(annotator_ids))
        .order_by(Annotation.id)
    ):
        history[annotation.image_id, annotation.annotator_id].append(annotation)
    assignments = {
        (a.image_id, a.annotator_id): a
        for a in session.scalars(
            select(Assignment).where(Assignment.image_id.in_(image_ids), Assignment.annotator_id.in_(annotator_ids))
        )
    }
    touched: set[int] = set()
    now = utcnow()
    for task in tasks:
        image = images[task.image_id]
        by_user: dict[str, list[Label]] = defaultdict(list)
        for label in task.labels:
            by_user[label.user_name].append(label)
        for user_name, labels in by_user.items():
            annotator_id = users.ids[user_name]
            rows = history[image.id, annotator_id]
            ordered = _chronological(labels)
            for position, label in enumerate(ordered):
                current = next((row for row in rows if row.is_current), None)
                imported = {row.label for row in rows if row.origin is AnnotationOrigin.imported}
                latest = position == len(ordered) - 1
                # Already imported (a re-run of the same export): skip it, unless it is this user's latest
                # answer and a different label is current now, which the latest answer must replace.
                if label.label in imported and not (latest and current is not None and current.label != label.label):
                    summary.annotations_existing += 1
                    continue
                annotation = Annotation(
                    project_id=project.id,
                    image_id=image.id,
                    annotator_id=annotator_id,
                    label=label.label,
                    duration_ms=label.duration_ms,
                    origin=AnnotationOrigin.imported,
                    is_current=True,
                    supersedes_id=current.id if current else None,
                    gold_correct=(label.label == image.gold_label) if image.gold_label is not None else None,
                )
                if label.created_at is not None:
                    annotation.created_at = label.created_at
                if current is not None:
                    current.is_current = False
                session.add(annotation)
                session.flush()  # the id, for the next row's supersedes_id
                rows.append(annotation)
                touched.add(image.id)
                summary.annotations_imported += 1
            assignment = assignments.get((image.id, annotator_id))
            if assignment is None:
                assignment = Assignment(
                    project_id=project.id, image_id=image.id, annotator_id=annotator_id, expires_at=now
                )
                session.add(assignment)
                assignments[image.id, annotator_id] = assignment
            assignment.status = AssignmentStatus.submitted
            assignment.updated_at = now
    session.flush()
    counts = dict(
        session.execute(
            select(Annotation.image_id, func.count(distinct(Annotation.annotator_id)))
            .where(Annotation.image_id.in_(sorted(touched)), Annotation.is_current)
            .group_by(Annotation.image_id)
        ).all()
    )
    for image_id in sorted(touched):
        images[image_id].label_count = counts.get(image_id, 0)
        refresh_consensus(session, project=project, image=images[image_id])
    for task in tasks:
        if task.gold_label is not None and images[task.image_id].gold_label != task.gold_label:
            set_gold(session, project=project, image_id=task.image_id, label=task.gold_label)
            summary.gold_set += 1
    session.flush()
    requeue_for_team(session, project_id=project.id)  # its annotators joined the project


# --- the import ---------------------------------------------------------------------------------


def import_labelstudio(
    *,
    db: Database,
    blobs: BlobStore,
    limits: Limits,
    project_id: int,
    tasks: list[Any],
    candidates: Iterable[Candidate],
    label_config: str | None = None,
    on_images: Callable[[int], None] | None = None,
    on_tasks: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Ingest the image files, then store each task's choices as imported annotations, a batch at a time.

    Each batch is its own transaction, so a large import never holds the database for long; an
    interrupted import is finished by running it again (nothing is stored twice).
    """
    summary = ImportSummary(tasks=len(tasks))
    with db.session() as session:
        project = session.get_one(Project, project_id)
        require_classification(project, feature="Label Studio import")
        labels = list(project.labels)
    target = target_from_config(label_config, labels) if label_config else Target()

    def as_label_studio(candidate: Candidate) -> Candidate:
        candidate.source = ImageSource.label_studio
        return candidate

    results = Ingestor(db=db, blobs=blobs, limits=limits).ingest(
        project_id, (as_label_studio(c) for c in candidates), on_progress=on_images
    )
    for result in results:
        if result.status is Outcome.accepted:
            summary.images_accepted += 1
        elif result.status is Outcome.duplicate:
            summary.images_duplicate += 1
        else:
            summary.images_rejected += 1
            summary.rejected_files.append(result)
    files = _Files(results, _existing_images(db, project_id=project_id, tasks=tasks))

    users = _Users(summary)
    batch: list[_Task] = []
    for index, raw in enumerate(tasks):
        task = _parse_task(index, raw, target, labels, files, summary)
        if task is not None:
            batch.append(task)
            summary.tasks_imported += 1
        if len(batch) >= TASK_BATCH:
            _store(db, project_id, batch, users, summary)
            batch = []
        if on_tasks:
            on_tasks(1)
    if batch:
        _store(db, project_id, batch, users, summary)
    summary.unreferenced_files = files.unreferenced()
    return summary


def _existing_images(db: Database, *, project_id: int, tasks: list[Any]) -> dict[str, int]:
    """Images already in the project that tasks name by ``meta.sha256``: their labels need no upload."""
    wanted = sorted({sha for task in tasks if isinstance(task, dict) and (sha := meta_sha256(task))})
    found: dict[str, int] = {}
    with db.session() as session:
        for start in range(0, len(wanted), 1000):
            query = select(Image.sha256, Image.id).where(
                Image.project_id == project_id, Image.sha256.in_(wanted[start : start + 1000])
            )
            found.update({row.sha256: row.id for row in session.execute(query)})
    return found


def _parse_task(
    index: int, raw: Any, target: Target, labels: Sequence[str], files: _Files, summary: ImportSummary
) -> _Task | None:
    task_id = raw.get("id") if isinstance(raw, dict) else None
    if not isinstance(task_id, int | str) or isinstance(task_id, bool):
        task_id = None
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            raise TaskRejected("invalid_task", 'a task must be an object with a "data" object')
        predictions = raw.get("predictions")
        summary.predictions_ignored += len(predictions) if isinstance(predictions, list) else 0
        image_id = files.image_id(raw, image_reference(raw, target))
        found, skipped = task_labels(raw, target, labels)
        gold = meta_gold(raw, labels)
        summary.annotations_cancelled += skipped
    except TaskRejected as exc:
        summary.tasks_rejected += 1
        summary.problem(TaskProblem(index, task_id, exc.code, exc.message, exc.details))
        return None
    return _Task(index=index, id=task_id, image_id=image_id, labels=found, gold_label=gold)


def _store(db: Database, project_id: int, batch: list[_Task], users: _Users, summary: ImportSummary) -> None:
    with db.session() as session:
        project = session.get_one(Project, project_id)
        _store_batch(session, project=project, tasks=batch, users=users, summary=summary)


def import_labelstudio_upload(
    *,
    db: Database,
    blobs: BlobStore,
    limits: Limits,
    project_id: int,
    export: IO[bytes],
    uploads: Sequence[tuple[str, IO[bytes]]],
    label_config: str | None = None,
) -> ImportSummary:
    """The HTTP import: the export file and the uploaded images or zip archives (the caller checked access)."""
    tasks = read_export(export)
    candidates = (
        candidate
        for name, fileobj in uploads
        for candidate in expand_upload(name, fileobj, limits=limits, source=ImageSource.label_studio)
    )
    return import_labelstudio(
        db=db,
        blobs=blobs,
        limits=limits,
        project_id=project_id,
        tasks=tasks,
        candidates=candidates,
        label_config=label_config,
    )
