"""Reading stored images: one by id (with the caller's access checked) and pages of a project's images."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import NotFound
from storage.models import Image
from storage.projects import get_project
from storage.users import Principal

MIMETYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
}


def get_image(session: Session, *, principal: Principal, image_id: int) -> Image:
    """The image, if the caller may see its project; otherwise NotFound, as if it did not exist."""
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found", code="image_not_found")
    try:
        get_project(session, principal=principal, project_id=image.project_id)
    except NotFound:
        raise NotFound(f"image {image_id} not found", code="image_not_found") from None
    return image


def list_images(session: Session, *, project_id: int, after: int | None, limit: int) -> list[Image]:
    """Up to ``limit`` images with id > ``after``, by id: keyset pagination on (project_id, id)."""
    query = select(Image).where(Image.project_id == project_id)
    if after is not None:
        query = query.where(Image.id > after)
    return list(session.scalars(query.order_by(Image.id).limit(limit)))


def mimetype(image: Image) -> str:
    return MIMETYPES.get(image.format, "application/octet-stream")
