from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import RequestModel
from storage.models import Role
from storage.users import USER_NAME_PATTERN


class UserCreate(RequestModel):
    name: str = Field(pattern=USER_NAME_PATTERN, description="Letters, digits, '_', '.', '@', '-'; up to 100.")
    role: Role = Field(description="admin, engineer or annotator.")


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    created_at: datetime


class UserWithToken(UserRead):
    token: str = Field(description="The API token. It is shown only this once: store it now.")
