"""Lane liveness: each worker's supervisor records its lanes in the database, the one store every API
process and worker shares, so ``/health`` can tell whether something consumes each lane.

A lane is ``up`` when at least one consumer of it, on any machine, has a lane process and a heartbeat
younger than ``job_stale_seconds``; ``down`` when consumers were recorded but none is up (a lane being
restarted, a worker that gave up, or one that died without a word); ``absent`` when no worker has
recorded it (none started yet, or all stopped cleanly).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flywheel.jobs.transport import LANES
from storage.db import Database
from storage.models import WorkerLane, utcnow


class LaneStatus(enum.StrEnum):
    up = "up"
    down = "down"
    absent = "absent"


@dataclass(frozen=True)
class LaneRecord:
    """What a supervisor knows about one of its lanes (``worker`` is None while the lane is down)."""

    lane: str
    worker: str | None
    started_at: datetime
    restarts: int = 0
    last_exit: str | None = None
    last_exit_at: datetime | None = None


@dataclass(frozen=True)
class Consumer:
    supervisor: str
    worker: str | None
    up: bool
    heartbeat_age_seconds: float
    started_at: datetime
    restarts: int
    last_exit: str | None
    last_exit_at: datetime | None


@dataclass(frozen=True)
class LaneHealth:
    lane: str
    status: LaneStatus
    consumers: list[Consumer]


def record_lanes(db: Database, *, supervisor: str, lanes: list[LaneRecord], stale_seconds: float) -> None:
    """Write the supervisor's lanes with a fresh heartbeat (one short transaction), and drop rows of other
    workers for these lanes whose heartbeat is stale: they died, and this worker now answers for the lane."""
    now = utcnow()
    rows = [
        {
            "supervisor": supervisor,
            "lane": record.lane,
            "worker": record.worker,
            "started_at": record.started_at,
            "heartbeat_at": now,
            "restarts": record.restarts,
            "last_exit": record.last_exit[:500] if record.last_exit else None,
            "last_exit_at": record.last_exit_at,
        }
        for record in lanes
    ]
    with db.session() as session:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        insert = dialect.insert(WorkerLane).values(rows)
        changing = ("worker", "started_at", "heartbeat_at", "restarts", "last_exit", "last_exit_at")
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["supervisor", "lane"], set_={name: insert.excluded[name] for name in changing}
            )
        )
        session.execute(
            delete(WorkerLane).where(
                WorkerLane.lane.in_([record.lane for record in lanes]),
                WorkerLane.supervisor != supervisor,
                WorkerLane.heartbeat_at < now - timedelta(seconds=stale_seconds),
            )
        )


def forget_lanes(db: Database, *, supervisor: str) -> None:
    """A worker stopping on request takes its rows away: nobody is meant to consume its lanes any more."""
    with db.session() as session:
        session.execute(delete(WorkerLane).where(WorkerLane.supervisor == supervisor))


def lane_health(session: Session, *, stale_seconds: float, lanes: tuple[str, ...] = LANES) -> list[LaneHealth]:
    """Each lane's status and its consumers, freshest first."""
    now = utcnow()
    by_lane: dict[str, list[Consumer]] = {lane: [] for lane in lanes}
    for row in session.scalars(select(WorkerLane).order_by(WorkerLane.heartbeat_at.desc())):
        age = max((now - row.heartbeat_at).total_seconds(), 0.0)
        consumer = Consumer(
            supervisor=row.supervisor,
            worker=row.worker,
            up=row.worker is not None and age <= stale_seconds,
            heartbeat_age_seconds=round(age, 1),
            started_at=row.started_at,
            restarts=row.restarts,
            last_exit=row.last_exit,
            last_exit_at=row.last_exit_at,
        )
        if row.lane in by_lane:
            by_lane[row.lane].append(consumer)
    return [
        LaneHealth(lane=lane, status=_status(consumers), consumers=consumers) for lane, consumers in by_lane.items()
    ]


def _status(consumers: list[Consumer]) -> LaneStatus:
    if any(consumer.up for consumer in consumers):
        return LaneStatus.up
    return LaneStatus.down if consumers else LaneStatus.absent
