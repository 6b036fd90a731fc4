"""What GET /health answers: the stores it checked, and each job lane's consumers."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class LaneConsumerRead(BaseModel):
    supervisor: str = Field(description="host:pid of the `labelwheel worker` process")
    worker: str | None = Field(description="host:pid of the lane process (as in a job's `worker`); null while down")
    up: bool
    heartbeat_age_seconds: float
    started_at: datetime
    restarts: int
    last_exit: str | None = Field(description="why the lane process last stopped, e.g. `killed by SIGKILL`")
    last_exit_at: datetime | None


class LaneRead(BaseModel):
    status: Literal["up", "down", "absent"] = Field(
        description="up: a consumer heartbeated within LABELWHEEL_JOB_STALE_SECONDS; down: none did; "
        "absent: no worker has consumed this lane (none started yet, or all stopped on purpose)"
    )
    consumers: list[LaneConsumerRead]


class HealthRead(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, str] = Field(description="`ok` or `failing: <error type>` per store")
    lanes: dict[str, LaneRead] = Field(description="each job lane; empty when the database cannot be read")
    fallback: dict[int, str] = Field(
        default_factory=dict,
        description="Projects whose serving model cannot answer, by id, and why: an older model answers their "
        "predictions meanwhile (status `degraded`, still HTTP 200).",
    )
