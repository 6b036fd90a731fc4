from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.images import IngestFileResult


class TaskProblemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    task_index: int = Field(description="The task's position in the export, from 0.")
    task_id: int | str | None = Field(description="The task's Label Studio id.")
    code: str = Field(
        description="unmatched_image, invalid_image, unknown_label, not_single_choice, unknown_annotator or "
        "invalid_task."
    )
    message: str
    details: Any = Field(default=None, description="More about the problem, when there is more.")


class AnnotatorMappingRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    labelstudio: str = Field(description="The Label Studio user (e-mail or id).")
    user_id: int = Field(description="The labelwheel annotator their labels belong to.")
    name: str
    created: bool = Field(
        description="The annotator was created by this import (without a usable token until rotate-token)."
    )


class LabelStudioImportSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    tasks: int
    tasks_imported: int
    tasks_rejected: int = Field(description="Tasks with a problem: none of their labels were stored.")
    images_accepted: int
    images_duplicate: int
    images_rejected: int
    unreferenced_files: int = Field(description="Uploaded files that no task names.")
    annotations_imported: int
    annotations_existing: int = Field(description="Annotations already imported by an earlier run.")
    annotations_cancelled: int = Field(description="Skipped (was_cancelled) annotations: no labels.")
    predictions_ignored: int = Field(description="Label Studio predictions, which are no labels.")
    gold_set: int = Field(description="Images made gold questions from labelwheel's own export metadata.")
    users_created: int
    annotators: list[AnnotatorMappingRead]
    rejected_files: list[IngestFileResult] = Field(
        description="Uploaded files that failed the image checks, each with its reason."
    )
    problems: list[TaskProblemRead] = Field(description="Each problem task, the first 1000.")
    problems_total: int = Field(description="All problem tasks, including those past the first 1000.")
