from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from annotation.imports import ImportSummary
from service.schemas.images import IngestFileResult


class TaskProblemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    task_index: int = Field(description="The task's position in the export (a COCO image's in its images), from 0.")
    task_id: int | str | None = Field(description="The task's Label Studio id, or the COCO image's id.")
    code: str = Field(
        description="unmatched_image, ambiguous_image, invalid_image, unknown_label, not_single_choice, "
        "unknown_annotator, invalid_task; for boxes also not_single_label, rotated_box, unsupported_region, no_boxes, "
        "size_mismatch, invalid_boxes, too_many_boxes, and in a COCO file invalid_annotation."
    )
    message: str
    details: Any = Field(default=None, description="More about the problem, when there is more.")


class AnnotatorMappingRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    labelstudio: str = Field(validation_alias="source", description="The Label Studio user (e-mail or id).")
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


class CocoAnnotatorRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_id: int = Field(description="The annotator the imported boxes belong to.")
    name: str
    created: bool = Field(
        description="The annotator was created by this import (without a usable token until rotate-token)."
    )


class CocoImportSummary(BaseModel):
    images: int = Field(description="Images the COCO file lists.")
    images_imported: int
    images_rejected: int = Field(description="COCO images with a problem: none of their boxes were stored.")
    files_accepted: int
    files_duplicate: int
    files_rejected: int
    unreferenced_files: int = Field(description="Uploaded files that no COCO image names.")
    annotations_imported: int = Field(description="Images whose boxes were stored as a new annotation.")
    annotations_existing: int = Field(description="Images whose boxes an earlier run imported already.")
    crowd_ignored: int = Field(description="Crowd regions (iscrowd 1): COCO's areas to ignore, not objects.")
    annotator: CocoAnnotatorRead | None = Field(description="Whose answers the boxes are (null when none stored).")
    rejected_files: list[IngestFileResult] = Field(
        description="Uploaded files that failed the image checks, each with its reason."
    )
    problems: list[TaskProblemRead] = Field(description="Each problem image, the first 1000.")
    problems_total: int = Field(description="All problem images, including those past the first 1000.")

    @classmethod
    def from_summary(cls, summary: ImportSummary) -> CocoImportSummary:
        """The import's counters in COCO's words: a task is a COCO image, an image an uploaded file."""
        return cls(
            images=summary.tasks,
            images_imported=summary.tasks_imported,
            images_rejected=summary.tasks_rejected,
            files_accepted=summary.images_accepted,
            files_duplicate=summary.images_duplicate,
            files_rejected=summary.images_rejected,
            unreferenced_files=summary.unreferenced_files,
            annotations_imported=summary.annotations_imported,
            annotations_existing=summary.annotations_existing,
            crowd_ignored=summary.crowd_ignored,
            annotator=CocoAnnotatorRead.model_validate(summary.annotators[0]) if summary.annotators else None,
            rejected_files=[IngestFileResult.model_validate(r, from_attributes=True) for r in summary.rejected_files],
            problems=[TaskProblemRead.model_validate(p) for p in summary.problems],
            problems_total=summary.problems_total,
        )
