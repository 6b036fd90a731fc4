from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from service.schemas.images import IngestFileResult


class TaskProblemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    task_index: int
    task_id: int | str | None
    code: str
    message: str
    details: Any = None


class AnnotatorMappingRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    labelstudio: str
    user_id: int
    name: str
    created: bool


class LabelStudioImportSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    tasks: int
    tasks_imported: int
    tasks_rejected: int
    images_accepted: int
    images_duplicate: int
    images_rejected: int
    unreferenced_files: int
    annotations_imported: int
    annotations_existing: int
    annotations_cancelled: int
    predictions_ignored: int
    gold_set: int
    users_created: int
    annotators: list[AnnotatorMappingRead]
    rejected_files: list[IngestFileResult]
    problems: list[TaskProblemRead]
    problems_total: int
