from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import RequestModel
from storage.models import Role
from storage.names import NAME_POLICY
from storage.users import MAX_USER_NAME_LENGTH, USER_NAME_PATTERN


class UserCreate(RequestModel):
    name: str = Field(
        min_length=1,
        max_length=MAX_USER_NAME_LENGTH,
        json_schema_extra={"pattern": USER_NAME_PATTERN},  # documents what create_user checks
        description="Letters, digits, '_', '.', '@', '-', starting with a letter or digit; unique ignoring case. "
        + NAME_POLICY,
    )
    role: Role = Field(description="admin, engineer or annotator.")


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    created_at: datetime


class UserWithToken(UserRead):
    token: str = Field(description="The API token. It is shown only this once: store it now.")
