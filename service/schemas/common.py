"""Shapes shared by every router."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

# Ids are 32-bit integer columns on PostgreSQL; larger numbers can name nothing.
MAX_ID = 2**31 - 1
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="The project's id.")]
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="The image's id, as the upload answered it.")]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="The user's id.")]
ModelId = Annotated[int, Path(ge=1, le=MAX_ID, description="The model version's id.")]
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]
SnapshotId = Annotated[int, Path(ge=1, le=MAX_ID, description="The dataset snapshot's id (a model card names it).")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Most items in one page (1 to 1000).")]
IdField = Annotated[int, Field(ge=1, le=MAX_ID)]


class RequestModel(BaseModel):
    """Request bodies refuse unknown fields, so a misspelt field is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str = Field(description="A stable, machine-readable error code, e.g. project_not_found.")
    message: str = Field(description="What went wrong and how to fix it.")
    details: Any = Field(default=None, description="More about the error when there is more, e.g. each invalid field.")


class ErrorResponse(BaseModel):
    error: ErrorBody


# Declared on routes so the OpenAPI schema documents the error shape for each status.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 422)
}
