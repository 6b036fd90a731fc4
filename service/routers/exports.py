from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse, StreamingResponse

from annotation.coco_import import DEFAULT_ANNOTATOR, import_coco_upload
from annotation.exports import MEDIA_TYPES, ExportFormat, check_export_format, export_chunks, export_filename
from annotation.labelstudio import import_labelstudio_upload
from annotation.labelstudio_tasks import MAX_LABEL_CONFIG_CHARS
from service.deps import AdminProject, EngineerProject, RuntimeDep
from service.schemas.common import ERROR_RESPONSES
from service.schemas.exports import CocoImportSummary, LabelStudioImportSummary

router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["exports"], responses=ERROR_RESPONSES)


@router.get(
    "/export",
    summary="Download the current labels or boxes as CSV, JSON, Label Studio, COCO or YOLO, streamed (admin, engineer)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One row or object per labeled image (a Label Studio task for `labelstudio`), a COCO "
            "document (`coco`) or a zip (`yolo`).",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {
                    "schema": {"oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}]}
                },
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
def export(
    project: EngineerProject,
    request: Request,
    runtime: RuntimeDep,
    format: Annotated[
        ExportFormat,
        Query(
            description="Classification: csv, json or labelstudio (a full JSON export). Detection: coco, yolo (a zip), "
            "labelstudio (rectanglelabels) or json."
        ),
    ] = ExportFormat.csv,
    images: Annotated[
        bool, Query(description="yolo only: put the image files in the zip too, as images/<sha256>.<ext>.")
    ] = False,
) -> StreamingResponse:
    """Streams the current label (boxes, in a detection project) of every labeled image, as a download named
    `project-<id>-labels.<ext>`. Classification: `csv` (one row per image), `json` (the same fields plus each
    annotator's current annotation) or `labelstudio` (a Label Studio full export). Detection: `coco` (COCO object
    detection JSON), `yolo` (a zip of labels/<sha256>.txt, data.yaml, train.txt and val.txt), `labelstudio`
    (rectanglelabels in percent) or `json` (boxes in pixels); a wrong kind is a 422 naming the formats that fit.
    Read in batches in short transactions, so any size uses little memory and labeling goes on meanwhile."""
    check_export_format(project, format, images=images)
    # The stream reads in short sessions of its own, after this function has returned.
    chunks = export_chunks(
        runtime.db,
        project_id=project.id,
        fmt=format,
        base_url=str(request.base_url),
        image_files=runtime.blobs if images else None,
    )
    filename = export_filename(project.id, format)
    return StreamingResponse(
        chunks, media_type=MEDIA_TYPES[format], headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


@router.post(
    "/import/labelstudio",
    summary="Import a Label Studio JSON export with its image files (admin)",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": LabelStudioImportSummary, "description": "Nothing new was stored."}},
)
def import_labelstudio(
    project: AdminProject,
    runtime: RuntimeDep,
    export: Annotated[UploadFile, File(description="Label Studio's JSON export: a list of tasks.")],
    files: Annotated[
        list[UploadFile] | None, File(description="The tasks' image files and/or zip archives; repeat the field.")
    ] = None,
    label_config: Annotated[
        str | None,
        Form(
            max_length=MAX_LABEL_CONFIG_CHARS,
            description="The Label Studio project's label config (XML), to find the Choices (or RectangleLabels) "
            "control and its image.",
        ),
    ] = None,
) -> JSONResponse:
    """Imports a Label Studio JSON export and its images (checked and deduplicated like any upload): choices in a
    classification project, rectanglelabels boxes (percent of the image, checked against its upright size) in a
    detection project. Tasks are matched to images by `meta.sha256` or by file name; each Label Studio user becomes
    an annotator member. URLs in the export are never fetched. Importing the same export again adds nothing (200);
    the answer lists each task's problem."""
    summary = import_labelstudio_upload(
        db=runtime.db,
        blobs=runtime.blobs,
        limits=runtime.limits,
        project_id=project.id,
        export=export.file,
        uploads=[(f.filename or "upload", f.file) for f in files or []],
        label_config=label_config or None,
    )
    body = LabelStudioImportSummary.model_validate(summary).model_dump(mode="json")
    return JSONResponse(body, status_code=status.HTTP_201_CREATED if summary.changed else status.HTTP_200_OK)


@router.post(
    "/import/coco",
    summary="Import a COCO object detection file with its image files into a detection project (admin)",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": CocoImportSummary, "description": "Nothing new was stored."}},
)
def import_coco(
    project: AdminProject,
    runtime: RuntimeDep,
    coco: Annotated[UploadFile, File(description="The COCO JSON file (images, annotations, categories).")],
    files: Annotated[
        list[UploadFile] | None, File(description="The images' files and/or zip archives; repeat the field.")
    ] = None,
    annotator: Annotated[
        str, Form(max_length=100, description="The annotator whose answers the boxes become (created when new).")
    ] = DEFAULT_ANNOTATOR,
) -> JSONResponse:
    """Imports a COCO file's boxes: each COCO image is matched to an uploaded file (or an image already in the
    project) by the `sha256` key labelwheel's COCO export writes, else by the base name of `file_name`, and its boxes
    (categories by name, crowd regions left out; no annotations: no objects) become one `imported` annotation by
    `annotator`, checked like a submission. Importing the same file again adds nothing (200); the answer lists each
    image's problem."""
    summary = import_coco_upload(
        db=runtime.db,
        blobs=runtime.blobs,
        limits=runtime.limits,
        project_id=project.id,
        coco_file=coco.file,
        uploads=[(f.filename or "upload", f.file) for f in files or []],
        annotator=annotator,
    )
    body = CocoImportSummary.from_summary(summary).model_dump(mode="json")
    return JSONResponse(body, status_code=status.HTTP_201_CREATED if summary.changed else status.HTTP_200_OK)
