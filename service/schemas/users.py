from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from storage.models import Role


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Role


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    created_at: datetime


class UserWithToken(UserRead):
    token: str = Field(description="The API token. It is shown only this once: store it now.")
