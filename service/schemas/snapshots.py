from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SnapshotRead(BaseModel):
    """A frozen labeled set: the exact images and labels a model was (or will be) trained on."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    content_sha256: str = Field(description="The sha256 of the snapshot's canonical content: same labels, same hash.")
    item_count: int = Field(description="Labeled images in it.")
    stats: dict[str, Any] = Field(description="Images per split and class (detection: boxes too).")
    created_at: datetime
