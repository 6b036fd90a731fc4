"""Import of a Label Studio JSON export: its images through the normal ingest, its choices (classification) or
rectanglelabels boxes (detection) as annotations.

Tasks name their image as a ``/data/upload/...`` path or a URL, which is never fetched: the image must be among
the uploaded files (``annotation.imports`` matches them). Each Label Studio user becomes an annotator
``ls-<e-mail local part or id>``; their answers become ``imported`` annotations, their skips
(``was_cancelled``) nothing. Labels outside the project's label set are refused per task, and so are boxes
drawn on an image of another size than the uploaded file's upright size. Importing the same export again adds
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from annotation.imports import (
    ImportSummary,
    ImportTask,
    MatchedFiles,
    TaskRejected,
    existing_images,
    ingest_files,
    store_parsed,
)
from annotation.labelstudio_tasks import (
    Target,
    image_reference,
    meta_gold,
    meta_gold_boxes,
    meta_sha256,
    read_export,
    reference_names,
    target_from_config,
    task_answers,
)
from storage.blobs import BlobStore
from storage.db import Database
from storage.ingest import Candidate, Limits, expand_upload
from storage.models import ImageSource, Project, TaskType


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
    """Ingest the image files, then store each task's answers as imported annotations, a batch at a time
    (``annotation.imports.store_parsed``)."""
    summary = ImportSummary(tasks=len(tasks))
    with db.session() as session:
        project = session.get_one(Project, project_id)
        detection, labels = project.task_type is TaskType.detection, list(project.labels)
    target = target_from_config(label_config, labels, detection=detection) if label_config else Target()

    def as_label_studio(candidate: Candidate) -> Candidate:
        candidate.source = ImageSource.label_studio
        return candidate

    results = ingest_files(
        db=db,
        blobs=blobs,
        limits=limits,
        project_id=project_id,
        candidates=(as_label_studio(c) for c in candidates),
        summary=summary,
        on_images=on_images,
    )
    shas = (sha for task in tasks if isinstance(task, dict) and (sha := meta_sha256(task)))
    files = MatchedFiles(results, existing_images(db, project_id=project_id, sha256s=shas))

    return store_parsed(
        db,
        project_id=project_id,
        items=tasks,
        parse=lambda index, raw: _parse_task(index, raw, target, labels, files, summary, detection=detection),
        files=files,
        summary=summary,
        on_tasks=on_tasks,
    )


def _parse_task(
    index: int,
    raw: Any,
    target: Target,
    labels: Sequence[str],
    files: MatchedFiles,
    summary: ImportSummary,
    *,
    detection: bool,
) -> ImportTask | None:
    task_id = raw.get("id") if isinstance(raw, dict) else None
    if not isinstance(task_id, int | str) or isinstance(task_id, bool):
        task_id = None
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            raise TaskRejected("invalid_task", 'a task must be an object with a "data" object')
        predictions = raw.get("predictions")
        summary.predictions_ignored += len(predictions) if isinstance(predictions, list) else 0
        reference = image_reference(raw, target) or ""
        image_id = files.image_id(sha256=meta_sha256(raw), names=reference_names(reference), shown=reference)
        answers, skipped = task_answers(raw, target, labels, detection=detection)
        gold_label = None if detection else meta_gold(raw, labels)
        gold_boxes = meta_gold_boxes(raw, labels) if detection else None
        summary.annotations_cancelled += skipped
    except TaskRejected as exc:
        summary.reject(index, task_id, exc)
        return None
    return ImportTask(index, task_id, image_id, answers, gold_label=gold_label, gold_boxes=gold_boxes)


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
