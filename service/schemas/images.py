from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from storage.ingest import Outcome
from storage.models import ImageSource, Split


class ImageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    sha256: str = Field(description="The hash of the original bytes; the image's identity within the project.")
    width: int
    height: int
    format: str = Field(description="The decoded format: PNG, JPEG, WEBP, BMP, TIFF or GIF.")
    byte_size: int = Field(description="Size of the original file in bytes.")
    exif_orientation: int | None = Field(
        description="The EXIF orientation tag (1-8), applied to the thumbnail and in training; null if none."
    )
    split: Split = Field(description="train or test, fixed from the sha256 (about 20% test, never trained on).")
    source: ImageSource = Field(description="How it arrived: upload, zip, folder (the import command) or label_studio.")
    original_name: str = Field(description="The uploaded file name (inside a zip: its path there).")
    created_at: datetime


class ImagesPage(BaseModel):
    items: list[ImageRead]
    next_after: int | None = Field(description="Pass it as `after` for the next page; null on the last page.")


class IngestFileResult(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str = Field(description="The file name as uploaded (inside a zip: archive name and path).")
    status: Outcome = Field(description="accepted (stored), duplicate (already in the project) or rejected.")
    image_id: int | None = Field(
        default=None, description="The stored image: the new one, or the existing one for a duplicate."
    )
    sha256: str | None = None
    code: str | None = Field(
        default=None, description="Why a file was rejected, as a code (e.g. not_an_image, too_many_pixels)."
    )
    reason: str | None = Field(default=None, description="Why a file was rejected, in words.")


class IngestSummary(BaseModel):
    accepted: int
    duplicate: int
    rejected: int
    files: list[IngestFileResult] = Field(
        description="Each file's outcome, in upload order (zip entries in archive order)."
    )
