from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from storage.ingest import Outcome
from storage.models import ImageSource, Split


class ImageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    sha256: str
    width: int
    height: int
    format: str
    byte_size: int
    exif_orientation: int | None
    split: Split
    source: ImageSource
    original_name: str
    created_at: datetime


class ImagesPage(BaseModel):
    items: list[ImageRead]
    next_after: int | None


class IngestFileResult(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    status: Outcome
    image_id: int | None = None
    sha256: str | None = None
    code: str | None = None
    reason: str | None = None


class IngestSummary(BaseModel):
    accepted: int
    duplicate: int
    rejected: int
    files: list[IngestFileResult]
