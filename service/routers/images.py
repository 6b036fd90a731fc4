from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Header, Query, Response, UploadFile, status
from fastapi.responses import JSONResponse, StreamingResponse

from service.deps import EngineerProject, MemberImage, MemberProject, ReadSessionDep, RuntimeDep
from service.observability import IMAGES
from service.schemas.common import ERROR_RESPONSES, MAX_ID, Limit
from service.schemas.images import ImageRead, ImagesPage, IngestFileResult, IngestSummary
from storage.errors import InvalidInput
from storage.images import list_images, mimetype
from storage.ingest import Outcome, ingest_uploads

router = APIRouter(tags=["images"], responses=ERROR_RESPONSES)

IMMUTABLE = "private, max-age=31536000, immutable"
IfNoneMatch = Annotated[
    str | None, Header(description="The ETag (the quoted sha256) of a copy you have: an unchanged image answers 304.")
]


@router.post(
    "/api/v1/projects/{project_id}/images",
    summary="Upload images and/or zip archives (admin, engineer)",
    responses={200: {"model": IngestSummary, "description": "Nothing new: every file was a duplicate."}},
    status_code=status.HTTP_201_CREATED,
)
def upload(
    project: EngineerProject,
    runtime: RuntimeDep,
    files: Annotated[list[UploadFile], File(description="Images or zip archives; repeat the field.")],
) -> JSONResponse:
    """Streams any number of images and zip archives (repeat the `files` field). Each file gets its own outcome:
    `accepted`, `duplicate` (same sha256 already in the project; its image id comes back) or `rejected` with a code
    and a reason. 201 when something new was stored, 200 when everything was a duplicate, 422 when nothing was
    acceptable."""
    results = ingest_uploads(
        db=runtime.db,
        blobs=runtime.blobs,
        limits=runtime.limits,
        project_id=project.id,
        uploads=[(f.filename or "upload", f.file) for f in files],
    )
    counts = {outcome: sum(r.status is outcome for r in results) for outcome in Outcome}
    for outcome, n in counts.items():
        IMAGES.labels(outcome.value).inc(n)
    summary = IngestSummary(
        accepted=counts[Outcome.accepted],
        duplicate=counts[Outcome.duplicate],
        rejected=counts[Outcome.rejected],
        files=[IngestFileResult.model_validate(r) for r in results],
    )
    if not counts[Outcome.accepted] and not counts[Outcome.duplicate]:
        raise InvalidInput(
            "no file in the upload was accepted; see each file's reason",
            code="no_images_accepted",
            details=summary.model_dump(mode="json"),
        )
    code = status.HTTP_201_CREATED if counts[Outcome.accepted] else status.HTTP_200_OK
    return JSONResponse(summary.model_dump(mode="json"), status_code=code)


@router.get("/api/v1/projects/{project_id}/images", summary="A page of the project's images, by id")
def index(
    project: MemberProject,
    session: ReadSessionDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Return images with an id above this one.")] = None,
    limit: Limit = 100,
) -> ImagesPage:
    """The project's images in id order, a page at a time: pass the answer's `next_after` as `after` for the next
    page (null: the last page)."""
    images = list_images(session, project_id=project.id, after=after, limit=limit)
    return ImagesPage(
        items=[ImageRead.model_validate(i) for i in images],
        next_after=images[-1].id if len(images) == limit else None,
    )


@router.get("/api/v1/images/{image_id}", summary="One image's facts")
def read(image: MemberImage) -> ImageRead:
    """Size, format, sha256, split, source and original file name of one image of a project you may see."""
    return ImageRead.model_validate(image)


def _blob_response(runtime: RuntimeDep, sha256: str, media_type: str, if_none_match: str | None) -> Response:
    etag = f'"{sha256}"'
    if if_none_match and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    chunks = runtime.blobs.iter_chunks(sha256)  # NotFound here becomes a 404 before any byte is sent
    # nosniff: a browser shows the bytes as the stored type says, never as HTML or script it guessed from them.
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


@router.get(
    "/api/v1/images/{image_id}/content",
    summary="The original bytes, unchanged",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, 304: {"description": "Not modified"}},
)
def content(image: MemberImage, runtime: RuntimeDep, if_none_match: IfNoneMatch = None) -> Response:
    """The file exactly as uploaded, with an `ETag` of its sha256: send it back in `If-None-Match` for a 304. Cached
    as immutable, since an image's bytes never change."""
    return _blob_response(runtime, image.sha256, mimetype(image), if_none_match)


@router.get(
    "/api/v1/images/{image_id}/thumbnail",
    summary="A PNG thumbnail, upright (EXIF orientation applied)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 304: {"description": "Not modified"}},
)
def thumbnail(image: MemberImage, runtime: RuntimeDep, if_none_match: IfNoneMatch = None) -> Response:
    """A small PNG with the EXIF orientation applied, so it shows upright; cached like the content."""
    return _blob_response(runtime, image.thumbnail_sha256, "image/png", if_none_match)
