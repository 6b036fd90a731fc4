from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse, StreamingResponse

from annotation.exports import MEDIA_TYPES, ExportFormat, export_chunks, export_filename
from annotation.labelstudio import import_labelstudio_upload
from annotation.labelstudio_tasks import MAX_LABEL_CONFIG_CHARS
from service.deps import AdminProject, EngineerProject, RuntimeDep
from service.schemas.common import ERROR_RESPONSES
from service.schemas.exports import LabelStudioImportSummary
from storage.projects import require_classification

router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["exports"], responses=ERROR_RESPONSES)


@router.get(
    "/export",
    summary="Download the current labels as CSV, JSON or a Label Studio export, streamed (admin, engineer)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One row or object per labeled image (a Label Studio task for `labelstudio`).",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            },
        }
    },
)
def export(
    project: EngineerProject,
    request: Request,
    runtime: RuntimeDep,
    format: Annotated[ExportFormat, Query(description="csv, json, or labelstudio (a full JSON export).")] = (
        ExportFormat.csv
    ),
) -> StreamingResponse:
    """Streams the current label of every labeled image, as a download named `project-<id>-labels.<ext>`: `csv` (one
    row per image), `json` (the same fields plus each annotator's current annotation) or `labelstudio` (a Label
    Studio full export). Read in batches in short transactions, so any size uses little memory and labeling goes on
    meanwhile."""
    require_classification(project, feature="exports")
    # The stream reads in short sessions of its own, after this function has returned.
    chunks = export_chunks(runtime.db, project_id=project.id, fmt=format, base_url=str(request.base_url))
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
            description="The Label Studio project's label config (XML), to find the Choices control and its image.",
        ),
    ] = None,
) -> JSONResponse:
    """Imports a Label Studio JSON export and its images (checked and deduplicated like any upload). Tasks are
    matched to images by `meta.sha256` or by file name; each Label Studio user becomes an annotator member. URLs in
    the export are never fetched. Importing the same export again adds nothing (200); the answer lists each task's
    problem."""
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
