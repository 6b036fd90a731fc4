from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model
from pydantic.fields import FieldInfo

from service.schemas.common import IdField, RequestModel
from storage.models import TaskType
from storage.names import NAME_PATTERN, NAME_POLICY, PADDED_NAME_PATTERN
from storage.projects import MAX_LABEL_LENGTH, MAX_LABELS, MAX_PROJECT_NAME_LENGTH, MIN_LABELS, ProjectSettings

# The name patterns document the policy; create_project checks it, so a bad name gets its own code and message.
LabelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_LABEL_LENGTH),
    Field(json_schema_extra={"pattern": NAME_PATTERN}),
]


def _optional(field: FieldInfo) -> tuple[Any, Any]:
    """The setting's type or None, defaulting to None; a nested group loses its default factory too, so a patch
    changes only the keys it names."""
    annotation: Any = field.annotation
    if field.default_factory is not None:
        return annotation | None, Field(default=None, description=field.description)
    return annotation | None, FieldInfo.merge_field_infos(field, default=None)


# Every project setting, each optional: PATCH changes only the ones it names. The fields are made at import,
# so a type checker sees a plain model.
if TYPE_CHECKING:
    ProjectSettingsPatch = BaseModel
else:
    ProjectSettingsPatch = create_model(
        "ProjectSettingsPatch",
        __config__=ConfigDict(extra="forbid"),
        **{name: _optional(field) for name, field in ProjectSettings.model_fields.items()},
    )


class ProjectCreate(RequestModel):
    name: str = Field(
        min_length=1,
        max_length=MAX_PROJECT_NAME_LENGTH,
        json_schema_extra={"pattern": PADDED_NAME_PATTERN},
        description="Unique; spaces at either end are removed. " + NAME_POLICY,
    )
    labels: list[LabelName] = Field(
        min_length=MIN_LABELS,
        max_length=MAX_LABELS,
        json_schema_extra={"uniqueItems": True},
        description="Ordered label names: unique, without leading or trailing spaces, 2 to 1000 of them. "
        + NAME_POLICY,
    )
    task_type: TaskType = Field(
        default=TaskType.classification,
        description="classification: one label per image; detection: boxes, each with one of the labels.",
    )
    settings: ProjectSettings = Field(default_factory=ProjectSettings)


class ProjectSettingsUpdate(RequestModel):
    settings: ProjectSettingsPatch = Field(
        description="Only the settings to change; a group (training, mining) merges key by key."
    )


class ProjectRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    task_type: TaskType
    labels: list[str] = Field(description="The ordered label set.")
    settings: dict[str, Any] = Field(description="Every setting (see ProjectSettings).")
    created_at: datetime


class MemberAdd(RequestModel):
    user_id: IdField
