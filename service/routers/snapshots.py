from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import StreamingResponse

from flywheel.training.snapshot_archives import ArchiveFormat, archive_chunks, plan_archive
from flywheel.training.snapshots import build_snapshot, list_snapshots
from service.deps import (
    EngineerProject,
    EngineerProjectForWrite,
    EngineerSnapshot,
    ReadSessionDep,
    RuntimeDep,
    SessionDep,
)
from service.schemas.common import ERROR_RESPONSES, MAX_ID
from service.schemas.snapshots import SnapshotRead

router = APIRouter(prefix="/api/v1", tags=["snapshots"], responses=ERROR_RESPONSES)


@router.get(
    "/projects/{project_id}/snapshots", summary="The project's dataset snapshots, newest first (admin, engineer)"
)
def index(project: EngineerProject, session: ReadSessionDep) -> list[SnapshotRead]:
    """Every training froze one; `POST` freezes the current labels now."""
    return [SnapshotRead.model_validate(s) for s in list_snapshots(session, project_id=project.id)]


@router.post(
    "/projects/{project_id}/snapshots",
    status_code=status.HTTP_201_CREATED,
    summary="Freeze the current labels as a snapshot, to download or train on (admin, engineer)",
)
def create(project: EngineerProjectForWrite, session: SessionDep, runtime: RuntimeDep) -> SnapshotRead:
    """Freezes every labeled image with its current label (or boxes) and split. The same labels give the same
    snapshot: asking again before a label changes returns the existing one."""
    return SnapshotRead.model_validate(build_snapshot(session, runtime.blobs, project=project))


@router.get("/snapshots/{snapshot_id}", summary="A dataset snapshot: its hash and counts (admin, engineer)")
def read(snapshot: EngineerSnapshot) -> SnapshotRead:
    """The snapshot a model card names: its content hash and its images per split and class."""
    return SnapshotRead.model_validate(snapshot)


@router.get(
    "/snapshots/{snapshot_id}/archive",
    summary="Download a snapshot's images and labels as a zip, streamed (admin, engineer)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}},
)
def archive(
    snapshot: EngineerSnapshot,
    session: ReadSessionDep,
    runtime: RuntimeDep,
    format: Annotated[
        ArchiveFormat | None,
        Query(
            description="Classification: imagefolder (train/<label>/ and test/<label>/ folders; the default) or csv "
            "(one images/ folder). Detection: coco (train/, test/ and annotations/; the default) or yolo "
            "(images/, labels/ and data.yaml)."
        ),
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="Leave out the images up to this id (to resume a download).")
    ] = None,
) -> StreamingResponse:
    """The snapshot's images exactly as uploaded and its labels, as the training code of your choice reads them:
    `snapshot.json` (the snapshot, its label order and the annotation files that follow), `labels.csv`
    (`file_name,image_id,sha256,split` and `label`, or `boxes`: how many), a detection format's annotation files,
    then the images by id, split into train and test by the snapshot's fixed split. Boxes are in pixels of the
    upright image (EXIF orientation applied)."""
    plan = plan_archive(session, runtime.blobs, snapshot=snapshot, fmt=format, after=after)
    return StreamingResponse(
        archive_chunks(runtime.blobs, plan),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{plan.filename}"'},
    )
