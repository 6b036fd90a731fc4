"""The job transport: huey, on SQLite (embedded default) or Redis (workers on other machines).

It carries job ids and project ids and knows its tasks by name only: the worker process hands it the
task bodies (``serve``), so an enqueuing process (the API) never imports them. The ``jobs`` table is
the truth about every job. Two lanes keep quick work from waiting behind long work: ``fast`` (policy
checks, head refreshes) and ``slow`` (full training, embeddings, mining, label quality), each
consumed by its own process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.consumer import Consumer, Scheduler

from storage.models import JobKind

LANES = ("fast", "slow")
FAST_KINDS = frozenset({JobKind.refresh})
UPKEEP_MINUTES = "*"  # every minute (every tick of the slow lane's scheduler: see Transport.consumer)
UPKEEP_EXPIRES_SECONDS = 60


def lane_for(kind: JobKind) -> str:
    return "fast" if kind in FAST_KINDS else "slow"


@dataclass(frozen=True)
class TaskBodies:
    """What the worker runs for each message: a job row, a project's policy check, the minute's upkeep."""

    run_job: Callable[[int], None]
    check_policy: Callable[[int], None]
    upkeep: Callable[[], None]


def _make_huey(queue_url: str, lane: str) -> Huey:
    name = f"labelwheel-{lane}"
    if queue_url.startswith(("redis://", "rediss://")):
        # Blocking pops: a worker picks up a message the moment it is enqueued.
        return RedisHuey(name, url=queue_url, blocking=True, results=False)
    return SqliteHuey(name, filename=queue_url.removeprefix("sqlite:///"), results=False)


class Transport:
    """Both lanes of one queue URL; the same object enqueues (anywhere) and consumes (in a worker)."""

    def __init__(self, queue_url: str) -> None:
        self.url = queue_url
        self.lanes: dict[str, Huey] = {lane: _make_huey(queue_url, lane) for lane in LANES}
        self._bodies: TaskBodies | None = None
        self._run_job = {lane: huey.task(name="run_job")(self._run_job_message) for lane, huey in self.lanes.items()}
        self._check_policy = self.lanes["fast"].task(name="check_policy")(self._check_policy_message)
        # An upkeep left waiting behind a long job expires: the next one does the same work, and a training of an
        # hour would otherwise leave one per tick to run back to back.
        self.lanes["slow"].periodic_task(
            crontab(minute=UPKEEP_MINUTES), name="upkeep", expires=timedelta(seconds=UPKEEP_EXPIRES_SECONDS)
        )(self._upkeep_message)

    def enqueue_job(self, job_id: int, kind: JobKind, *, delay_seconds: float = 0.0) -> None:
        """Ask a worker to run the job row ``job_id`` on its kind's lane (after ``delay_seconds``)."""
        task = self._run_job[lane_for(kind)]
        if delay_seconds > 0:
            task.schedule((job_id,), delay=timedelta(seconds=delay_seconds))
        else:
            task(job_id)

    def enqueue_policy_check(self, project_id: int) -> None:
        """Ask a worker to let the project's retraining policy decide what to start."""
        self._check_policy(project_id)

    def close(self) -> None:
        """Close the SQLite queue's connections, so a process about to fork leaves none to its children (Redis
        connection pools notice a fork by themselves)."""
        for huey in self.lanes.values():
            huey.storage.close()

    def serve(self, bodies: TaskBodies) -> None:
        """Give this process the task bodies, before it consumes a lane."""
        self._bodies = bodies

    def consumer(self, lane: str, *, upkeep_seconds: int) -> Any:
        """A huey consumer for one lane: one task at a time; on SQLite it polls every 0.1 s (fast) or at most
        every second (slow) when idle; on Redis it blocks until a message comes. The slow lane enqueues the upkeep
        every ``upkeep_seconds`` from its start (huey's own scheduler: every 60 s)."""
        if self._bodies is None:
            raise RuntimeError("no task bodies: a process consumes the queue through flywheel.worker only")

        class UpkeepScheduler(Scheduler):
            periodic_task_seconds = upkeep_seconds

        class LaneConsumer(Consumer):
            scheduler_class = UpkeepScheduler

        return LaneConsumer(
            self.lanes[lane],
            workers=1,
            periodic=lane == "slow",
            initial_delay=0.05,
            max_delay=0.1 if lane == "fast" else 1.0,
        )

    def _served(self) -> TaskBodies:
        if self._bodies is None:
            raise RuntimeError("a queue message reached a process without task bodies")
        return self._bodies

    def _run_job_message(self, job_id: int) -> None:
        self._served().run_job(job_id)

    def _check_policy_message(self, project_id: int) -> None:
        self._served().check_policy(project_id)

    def _upkeep_message(self) -> None:
        self._served().upkeep()


@functools.cache
def get_transport(queue_url: str) -> Transport:
    return Transport(queue_url)
