"""Importing answers made in another tool (Label Studio, a COCO file): its image files through the normal ingest,
matched to its tasks by content hash or file name, its answers stored as ``imported`` annotations.

Nothing is ever fetched (URL import is a classic server-side request forgery hole in labeling tools): an image
must be among the uploaded files, matched by a content hash labelwheel's own exports carry, or by file name,
with or without the ``xxxxxxxx-`` prefix Label Studio gives uploads. A task (a Label Studio task, a COCO image)
is imported whole or not at all: anything wrong with it is one problem in the summary, and its answers go
through the same checks as a submission (labels, and boxes against the upright image). Each batch of tasks is
one transaction, so a large import never holds the database for long; importing the same file again adds nothing.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import IO, Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from annotation.annotations import Answer, check_answer, gold_correct
from annotation.box_answers import DrawnBox, same_boxes
from annotation.consensus import refresh_consensus
from annotation.curation import set_gold
from annotation.queue import requeue_for_team
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import Conflict, InvalidInput, PayloadTooLarge
from storage.ingest import Candidate, Ingestor, IngestResult, Limits, Outcome
from storage.models import Annotation, AnnotationOrigin, Assignment, AssignmentStatus, Image, Project, Role, utcnow
from storage.projects import add_member
from storage.users import create_user, find_user, get_user_by_name

MAX_IMPORT_BYTES = 256 * 1024 * 1024
MAX_PROBLEMS = 1000
TASK_BATCH = 200
PIXEL_DIGITS = 6  # boxes converted from percent keep this many decimals: 1e-6 px, exact for whole and half pixels


class TaskRejected(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


@dataclass(frozen=True)
class TaskProblem:
    task_index: int
    task_id: Any
    code: str
    message: str
    details: Any = None


@dataclass(frozen=True)
class AnnotatorMapping:
    source: str  # how the other tool named the person
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
    crowd_ignored: int = 0
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

    def reject(self, index: int, task_id: Any, exc: TaskRejected | InvalidInput) -> None:
        self.tasks_rejected += 1
        self.problem(TaskProblem(index, task_id, exc.code, exc.message, exc.details))

    @property
    def changed(self) -> bool:
        return bool(self.images_accepted or self.annotations_imported or self.gold_set)


@dataclass(frozen=True)
class SourceBoxes:
    """Boxes as another tool wrote them: in pixels (COCO) or in percent of the image (Label Studio), with the
    image sizes the tool said it drew on, which must be the upright size of the file."""

    boxes: tuple[DrawnBox, ...]
    percent: bool = False
    sizes: frozenset[tuple[float, float]] = frozenset()

    def in_pixels(self, image: Image) -> list[DrawnBox]:
        width, height = image.upright_size
        wrong = sorted(size for size in self.sizes if size != (width, height))
        if wrong:
            shown = ", ".join(f"{w:g}x{h:g}" for w, h in wrong[:5])
            raise TaskRejected(
                "size_mismatch",
                f"the boxes were drawn on a {shown} image, but the file is {width}x{height} upright (EXIF "
                "orientation applied); upload the very file they were drawn on",
                {"drawn_on": [list(size) for size in wrong[:5]], "upright": [width, height]},
            )
        if not self.percent:
            return list(self.boxes)
        return [
            DrawnBox(
                label=box.label,
                x=round(box.x * width / 100, PIXEL_DIGITS),
                y=round(box.y * height / 100, PIXEL_DIGITS),
                w=round(box.w * width / 100, PIXEL_DIGITS),
                h=round(box.h * height / 100, PIXEL_DIGITS),
            )
            for box in self.boxes
        ]


@dataclass(frozen=True)
class ImportedAnswer:
    """One person's answer in the other tool: a label (classification) or boxes (detection)."""

    user_name: str
    source_user: str
    label: str | None
    boxes: SourceBoxes | None
    created_at: datetime | None
    duration_ms: int | None
    position: int


@dataclass
class ImportTask:
    index: int
    id: Any
    image_id: int
    answers: list[ImportedAnswer]
    gold_label: str | None = None
    gold_boxes: SourceBoxes | None = None


def read_json_file(fileobj: IO[bytes], *, what: str, max_bytes: int = MAX_IMPORT_BYTES) -> Any:
    """The uploaded JSON document; PayloadTooLarge past ``max_bytes``, InvalidInput when it is no JSON."""
    data = fileobj.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the {what} has more than {max_bytes:,} bytes; split it into several", code="export_too_large"
        )
    try:
        return json.loads(data.removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the {what} is not valid JSON ({str(exc)[:200]})", code="invalid_export") from None


def finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --- matching images ----------------------------------------------------------------------------


def ingest_files(
    *,
    db: Database,
    blobs: BlobStore,
    limits: Limits,
    project_id: int,
    candidates: Iterable[Candidate],
    summary: ImportSummary,
    on_images: Callable[[int], None] | None = None,
) -> list[IngestResult]:
    """The uploaded files through the normal ingest (checks, dedup by sha256), counted in the summary."""
    results = Ingestor(db=db, blobs=blobs, limits=limits).ingest(project_id, candidates, on_progress=on_images)
    for result in results:
        if result.status is Outcome.accepted:
            summary.images_accepted += 1
        elif result.status is Outcome.duplicate:
            summary.images_duplicate += 1
        else:
            summary.images_rejected += 1
            summary.rejected_files.append(result)
    return results


def existing_images(db: Database, *, project_id: int, sha256s: Iterable[str]) -> dict[str, int]:
    """Images already in the project that tasks name by content hash: their answers need no upload."""
    wanted = sorted(set(sha256s))
    found: dict[str, int] = {}
    with db.session() as session:
        for start in range(0, len(wanted), 1000):
            query = select(Image.sha256, Image.id).where(
                Image.project_id == project_id, Image.sha256.in_(wanted[start : start + 1000])
            )
            found.update({row.sha256: row.id for row in session.execute(query)})
    return found


class MatchedFiles:
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

    def image_id(self, *, sha256: str | None, names: Sequence[str], shown: str) -> int:
        """The image a task names by content hash, else by one of ``names``; ``shown`` is the task's reference."""
        if sha256 and sha256 in self.by_sha:
            return self._use(self.by_sha[sha256])
        if sha256 and sha256 in self.existing_by_sha:
            return self.existing_by_sha[sha256]
        for name in names:
            matches = self.by_name.get(name, [])
            if len({m.sha256 or m.name for m in matches}) > 1:
                raise TaskRejected(
                    "ambiguous_image",
                    f"several different uploaded files are named {name!r}; upload only the one this task shows",
                    {"files": [m.name for m in matches[:10]]},
                )
            if matches:
                return self._use(matches[0])
        shown = shown[:300]
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


# --- storing answers ----------------------------------------------------------------------------


class _Users:
    """The other tool's people mapped to labelwheel annotators, found or created once per import."""

    def __init__(self, summary: ImportSummary) -> None:
        self.ids: dict[str, int] = {}
        self.summary = summary

    def resolve(self, session: Session, project: Project, answers: Iterable[ImportedAnswer]) -> None:
        for answer in answers:
            if answer.user_name in self.ids:
                continue
            user = find_user(session, name=answer.user_name)
            created = False
            if user is None:
                try:
                    user, _ = create_user(session, name=answer.user_name, role=Role.annotator)
                    created = True
                except Conflict:  # created by a concurrent import meanwhile
                    user = get_user_by_name(session, name=answer.user_name)
            add_member(session, project=project, user_id=user.id)
            self.ids[answer.user_name] = user.id
            self.summary.users_created += created
            self.summary.annotators.append(AnnotatorMapping(answer.source_user, user.id, user.name, created))


def _key(label: str | None, boxes: Sequence[Mapping[str, Any]] | None) -> Any:
    """What makes two answers the same: the label, or the boxes in any order."""
    if boxes is None:
        return label
    return tuple(sorted((b["label"], b["x"], b["y"], b["w"], b["h"]) for b in boxes))


def _chronological(answers: list[tuple[ImportedAnswer, Answer]]) -> list[tuple[ImportedAnswer, Answer]]:
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(answers, key=lambda pair: (pair[0].created_at or oldest, pair[0].position))


@dataclass
class _Checked:
    task: ImportTask
    answers: list[tuple[ImportedAnswer, Answer]]
    gold: Answer | None


def _check(project: Project, image: Image, task: ImportTask) -> _Checked:
    """The task's answers as a submission would store them; TaskRejected or InvalidInput when any is wrong."""

    def answer(label: str | None, boxes: SourceBoxes | None) -> Answer:
        drawn = boxes.in_pixels(image) if boxes is not None else None
        return check_answer(project, image, label=label, boxes=drawn)

    answers = [(a, answer(a.label, a.boxes)) for a in task.answers]
    gold = None
    if task.gold_label is not None or task.gold_boxes is not None:
        gold = answer(task.gold_label, task.gold_boxes)
    return _Checked(task, answers, gold)


def _new_gold(image: Image, gold: Answer | None) -> bool:
    if gold is None:
        return False
    if gold.boxes is not None:
        return image.gold_boxes is None or not same_boxes(image.gold_boxes, gold.boxes)
    return image.gold_label != gold.label


def _store_batch(
    session: Session, *, project: Project, tasks: list[ImportTask], users: _Users, summary: ImportSummary
) -> None:
    """Add one batch of tasks' annotations in one transaction, then refresh each touched image."""
    image_ids = sorted({task.image_id for task in tasks})
    # Rows locked in id order, as a submission locks its image: on PostgreSQL the two cannot interleave.
    images = {
        image.id: image
        for image in session.scalars(select(Image).where(Image.id.in_(image_ids)).order_by(Image.id).with_for_update())
    }
    checked: list[_Checked] = []
    for task in tasks:
        try:
            checked.append(_check(project, images[task.image_id], task))
        except (TaskRejected, InvalidInput) as exc:
            summary.reject(task.index, task.id, exc)
    summary.tasks_imported += len(checked)
    users.resolve(session, project, (answer for item in checked for answer, _ in item.answers))
    annotator_ids = sorted({users.ids[answer.user_name] for item in checked for answer, _ in item.answers})
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
    for item in checked:
        image = images[item.task.image_id]
        by_user: dict[str, list[tuple[ImportedAnswer, Answer]]] = defaultdict(list)
        for answer, stored in item.answers:
            by_user[answer.user_name].append((answer, stored))
        for user_name, answers in by_user.items():
            annotator_id = users.ids[user_name]
            rows = history[image.id, annotator_id]
            ordered = _chronological(answers)
            for position, (answer, stored) in enumerate(ordered):
                current = next((row for row in rows if row.is_current), None)
                imported = {_key(row.label, row.boxes) for row in rows if row.origin is AnnotationOrigin.imported}
                key = _key(stored.label, stored.boxes)
                latest = position == len(ordered) - 1
                # Already imported (a re-run of the same file): skip it, unless it is this user's latest answer
                # and a different answer is current now, which the latest answer must replace.
                if key in imported and not (
                    latest and current is not None and _key(current.label, current.boxes) != key
                ):
                    summary.annotations_existing += 1
                    continue
                annotation = Annotation(
                    project_id=project.id,
                    image_id=image.id,
                    annotator_id=annotator_id,
                    label=stored.label,
                    boxes=stored.boxes,
                    duration_ms=answer.duration_ms,
                    origin=AnnotationOrigin.imported,
                    is_current=True,
                    supersedes_id=current.id if current else None,
                    gold_correct=gold_correct(image, label=stored.label, boxes=stored.boxes),
                )
                if answer.created_at is not None:
                    annotation.created_at = answer.created_at
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
    for item in checked:
        gold = item.gold
        if gold is not None and _new_gold(images[item.task.image_id], gold):
            boxes = [DrawnBox(**box) for box in gold.boxes] if gold.boxes is not None else None
            set_gold(session, project=project, image_id=item.task.image_id, label=gold.label, boxes=boxes)
            summary.gold_set += 1
    session.flush()
    requeue_for_team(session, project_id=project.id)  # its annotators joined the project


def store_parsed(
    db: Database,
    *,
    project_id: int,
    items: Sequence[Any],
    parse: Callable[[int, Any], ImportTask | None],
    files: MatchedFiles,
    summary: ImportSummary,
    on_tasks: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Parse each item of the other tool's file (``parse(index, item)``: None when refused, its problem in the
    summary), store the tasks in batches, and note the uploaded files no task referred to."""

    def parsed() -> Iterator[ImportTask]:
        for index, raw in enumerate(items):
            task = parse(index, raw)
            if task is not None:
                yield task
            if on_tasks:
                on_tasks(1)

    store_tasks(db, project_id=project_id, tasks=parsed(), summary=summary)
    summary.unreferenced_files = files.unreferenced()
    return summary


def store_tasks(db: Database, *, project_id: int, tasks: Iterable[ImportTask], summary: ImportSummary) -> None:
    """Store the tasks' answers (and gold answers), ``TASK_BATCH`` tasks per transaction. An interrupted import is
    finished by running it again: nothing is stored twice."""
    users = _Users(summary)
    batch: list[ImportTask] = []

    def store() -> None:
        with db.session() as session:
            project = session.get_one(Project, project_id)
            _store_batch(session, project=project, tasks=batch, users=users, summary=summary)
        batch.clear()

    for task in tasks:
        batch.append(task)
        if len(batch) >= TASK_BATCH:
            store()
    if batch:
        store()
