from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from storage.models import TaskType


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    labels: list[str] = Field(description="Ordered label names: unique, non-empty, 2 to 1000 of them.")
    task_type: TaskType = TaskType.classification
    settings: dict[str, Any] = Field(default_factory=dict, description="See ProjectSettings for the keys.")


class ProjectSettingsUpdate(BaseModel):
    settings: dict[str, Any]


class ProjectRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    task_type: TaskType
    labels: list[str]
    settings: dict[str, Any]
    created_at: datetime


class MemberAdd(BaseModel):
    user_id: int
