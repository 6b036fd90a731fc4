"""Label Studio's ML-backend requests (loose: Label Studio adds fields between versions) and the link's shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import IdField, RequestModel

MAX_TASKS = 1000


class LabelStudioRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupRequest(LabelStudioRequest):
    project: str | None = None
    label_schema: str | None = Field(default=None, alias="schema", description="The project's label config (XML).")


class PredictRequest(LabelStudioRequest):
    tasks: list[dict[str, Any]] = Field(max_length=MAX_TASKS, description="Label Studio tasks, answered in order.")
    label_config: str | None = None
    project: str | None = None


class TrainRequest(LabelStudioRequest):
    project: str | None = None


class LabelStudioConnect(RequestModel):
    url: str = Field(
        max_length=500, description="The Label Studio server, scheme://host[:port]: images come only from there."
    )
    access_token: str = Field(max_length=200, description="A Label Studio API token (legacy token) to read images.")
    ls_project_id: IdField | None = Field(default=None, description="The Label Studio project's id.")


class LabelStudioLinkRead(BaseModel):
    url: str
    ls_project_id: int | None
    backend_url: str = Field(description="Paste into Label Studio's Model settings, with basic auth.")
    basic_auth_user: str
    tasks: int = Field(description="Label Studio tasks whose image labelwheel holds.")
    annotations: int = Field(description="Label Studio annotations received through the webhook.")
    pushed: int = Field(description="Tasks whose last prediction was pushed to Label Studio.")
    pushed_at: datetime | None


class LabelStudioLinkCreated(LabelStudioLinkRead):
    basic_auth_password: str = Field(description="The project's secret, shown once; a new PUT replaces it.")
