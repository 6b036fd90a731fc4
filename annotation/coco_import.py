"""Import of a COCO object detection file: its boxes as the answers of one named annotator.

Each COCO image is matched to an uploaded file (or an image already in the project) by the ``sha256`` key
labelwheel's export writes, else by the base name of ``file_name`` (``annotation.imports``); categories by name.
Its non-crowd boxes become one ``imported`` annotation by the importing annotator (an image without annotations:
no objects). Crowd regions (``iscrowd`` 1) are COCO's "ignore" areas, not objects: they are counted and left
out. A ``width``/``height`` other than the file's upright size refuses the image.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from annotation.box_answers import DrawnBox
from annotation.imports import (
    ImportedAnswer,
    ImportSummary,
    ImportTask,
    MatchedFiles,
    SourceBoxes,
    TaskRejected,
    existing_images,
    finite_number,
    ingest_files,
    read_json_file,
    store_parsed,
)
from annotation.labelstudio_tasks import reference_names
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import InvalidInput
from storage.ingest import Candidate, Limits, expand_upload
from storage.models import ImageSource, Project
from storage.names import nfc
from storage.projects import require_detection
from storage.users import check_user_name

DEFAULT_ANNOTATOR = "coco-import"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CocoFile:
    images: list[Any]
    category_names: dict[int, str]
    annotations: dict[Any, list[Any]]  # by COCO image id


def read_coco(data: Any) -> CocoFile:
    """The parts of a COCO document an import reads; InvalidInput when its structure is not COCO's."""

    def refuse(message: str) -> InvalidInput:
        return InvalidInput(f"{message}: send a COCO object detection file", code="invalid_export")

    if not isinstance(data, dict):
        raise refuse("the COCO file must be a JSON object with images, annotations and categories")
    images, annotations, categories = data.get("images"), data.get("annotations", []), data.get("categories", [])
    if not isinstance(images, list) or not isinstance(annotations, list) or not isinstance(categories, list):
        raise refuse('"images", "annotations" and "categories" must be lists')
    names: dict[int, str] = {}
    for category in categories:
        ident = category.get("id") if isinstance(category, dict) else None
        if not isinstance(ident, int) or isinstance(ident, bool) or not isinstance(category.get("name"), str):
            raise refuse(f"a category must have an integer id and a name, got {str(category)[:100]}")
        if ident in names:
            raise refuse(f"category id {ident} is used twice")
        names[ident] = category["name"]
    image_ids = {image.get("id") for image in images if isinstance(image, dict) and _is_id(image.get("id"))}
    by_image: dict[Any, list[Any]] = defaultdict(list)
    strays = []
    for annotation in annotations:
        ident = annotation.get("image_id") if isinstance(annotation, dict) else None
        if _is_id(ident) and ident in image_ids:
            by_image[ident].append(annotation)
        else:
            strays.append(str(ident)[:20])
    if strays:
        raise refuse(
            f"{len(strays)} annotations name image ids the file's images do not list ({', '.join(strays[:10])})"
        )
    return CocoFile(images, names, by_image)


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _boxes(annotations: list[Any], names: dict[int, str], labels: Sequence[str]) -> tuple[list[DrawnBox], int]:
    """The image's boxes, and how many crowd regions were left out."""
    boxes, crowd = [], 0
    for annotation in annotations:
        if not isinstance(annotation, dict):
            raise TaskRejected("invalid_annotation", "an annotation is not an object")
        if annotation.get("iscrowd"):
            crowd += 1
            continue
        category = annotation.get("category_id")
        name = names.get(category) if isinstance(category, int) and not isinstance(category, bool) else None
        if name is None:
            raise TaskRejected(
                "invalid_annotation",
                f"annotation {str(annotation.get('id'))[:50]} has category_id {str(category)[:50]}, "
                "which the file's categories do not list",
            )
        label = nfc(name)
        if label not in labels:
            raise TaskRejected(
                "unknown_label",
                f"category {label[:100]!r} is not one of the project's labels; nothing of this image was stored",
                {"label": label[:100], "valid_labels": list(labels[:100])},
            )
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(finite_number(v) for v in bbox):
            raise TaskRejected(
                "invalid_annotation",
                f"annotation {str(annotation.get('id'))[:50]} needs a bbox of four numbers [x, y, w, h] in pixels",
            )
        boxes.append(DrawnBox(label, *map(float, bbox)))
    return boxes, crowd


def _parse_image(
    index: int,
    raw: Any,
    coco: CocoFile,
    labels: Sequence[str],
    files: MatchedFiles,
    summary: ImportSummary,
    *,
    annotator: str,
) -> ImportTask | None:
    ident = raw.get("id") if isinstance(raw, dict) and _is_id(raw.get("id")) else None
    try:
        if not isinstance(raw, dict) or ident is None or not isinstance(raw.get("file_name"), str):
            raise TaskRejected("invalid_task", "a COCO image must be an object with an id and a file_name")
        sha = raw.get("sha256") if isinstance(raw.get("sha256"), str) and _SHA256.match(raw["sha256"]) else None
        image_id = files.image_id(sha256=sha, names=reference_names(raw["file_name"]), shown=raw["file_name"])
        boxes, crowd = _boxes(coco.annotations.get(ident, []), coco.category_names, labels)
    except TaskRejected as exc:
        summary.reject(index, ident, exc)
        return None
    summary.crowd_ignored += crowd
    width: Any = raw.get("width")
    height: Any = raw.get("height")
    sizes = (
        frozenset({(float(width), float(height))}) if finite_number(width) and finite_number(height) else frozenset()
    )
    answer = ImportedAnswer(
        user_name=annotator,
        source_user=annotator,
        label=None,
        boxes=SourceBoxes(tuple(boxes), sizes=sizes),
        created_at=None,
        duration_ms=None,
        position=0,
    )
    return ImportTask(index, ident, image_id, [answer])


def import_coco(
    *,
    db: Database,
    blobs: BlobStore,
    limits: Limits,
    project_id: int,
    data: Any,
    candidates: Iterable[Candidate],
    annotator: str = DEFAULT_ANNOTATOR,
    on_images: Callable[[int], None] | None = None,
    on_tasks: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Ingest the image files, then store each COCO image's boxes as ``annotator``'s imported answer (an
    annotator created and added to the project when needed); re-importing the same file adds nothing."""
    annotator = check_user_name(annotator)
    with db.session() as session:
        project = session.get_one(Project, project_id)
        require_detection(project, feature="COCO import")
        labels = list(project.labels)
    coco = read_coco(data)
    summary = ImportSummary(tasks=len(coco.images))
    results = ingest_files(
        db=db,
        blobs=blobs,
        limits=limits,
        project_id=project_id,
        candidates=candidates,
        summary=summary,
        on_images=on_images,
    )
    shas = (i["sha256"] for i in coco.images if isinstance(i, dict) and _SHA256.match(str(i.get("sha256"))))
    files = MatchedFiles(results, existing_images(db, project_id=project_id, sha256s=shas))

    return store_parsed(
        db,
        project_id=project_id,
        items=coco.images,
        parse=lambda index, raw: _parse_image(index, raw, coco, labels, files, summary, annotator=annotator),
        files=files,
        summary=summary,
        on_tasks=on_tasks,
    )


def import_coco_upload(
    *,
    db: Database,
    blobs: BlobStore,
    limits: Limits,
    project_id: int,
    coco_file: IO[bytes],
    uploads: Sequence[tuple[str, IO[bytes]]],
    annotator: str = DEFAULT_ANNOTATOR,
) -> ImportSummary:
    """The HTTP import: the COCO file and the uploaded images or zip archives (the caller checked access)."""
    data = read_json_file(coco_file, what="COCO file")
    candidates = (
        candidate
        for name, fileobj in uploads
        for candidate in expand_upload(name, fileobj, limits=limits, source=ImageSource.upload)
    )
    return import_coco(
        db=db,
        blobs=blobs,
        limits=limits,
        project_id=project_id,
        data=data,
        candidates=candidates,
        annotator=annotator,
    )
