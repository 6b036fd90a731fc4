"""The job queue: huey, on SQLite (embedded default) or Redis (workers on other machines).

The queue only carries job ids; the ``jobs`` table is the truth about every job. Two lanes keep
quick work from waiting behind long work: ``fast`` (policy checks, head refreshes) and ``slow``
(full training, embeddings, mining, label quality). Each lane is consumed by its own process.
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey, crontab

from storage.models import JobKind

logger = logging.getLogger(__name__)

LANES = ("fast", "slow")
FAST_KINDS = frozenset({JobKind.refresh})
UPKEEP_MINUTES = "*"  # every minute


def lane_for(kind: JobKind) -> str:
    return "fast" if kind in FAST_KINDS else "slow"


def _make_huey(queue_url: str, lane: str) -> Huey:
    name = f"labelwheel-{lane}"
    if queue_url.startswith(("redis://", "rediss://")):
        # Blocking pops: a worker picks up a message the moment it is enqueued.
        return RedisHuey(name, url=queue_url, blocking=True, results=False)
    return SqliteHuey(name, filename=queue_url.removeprefix("sqlite:///"), results=False)


class Queues:
    """Both lanes of one queue URL, with the tasks registered; the same object enqueues and consumes."""

    def __init__(self, queue_url: str) -> None:
        from flywheel import worker  # the task bodies; importing them here keeps the web process free of torch

        self.url = queue_url
        self.lanes: dict[str, Huey] = {lane: _make_huey(queue_url, lane) for lane in LANES}
        self._run_job = {lane: huey.task(name="run_job")(worker.run_job) for lane, huey in self.lanes.items()}
        self._check = self.lanes["fast"].task(name="check_project")(worker.check_project)
        self.lanes["slow"].periodic_task(crontab(minute=UPKEEP_MINUTES), name="upkeep")(worker.upkeep)

    def run_job(self, job_id: int, kind: JobKind, *, delay_seconds: float = 0.0) -> None:
        task = self._run_job[lane_for(kind)]
        if delay_seconds > 0:
            task.schedule((job_id,), delay=timedelta(seconds=delay_seconds))
        else:
            task(job_id)

    def check_project(self, project_id: int) -> None:
        self._check(project_id)

    def pending(self, lane: str) -> int:
        return self.lanes[lane].pending_count()

    def consumer(self, lane: str, **options: Any) -> Any:
        """A huey consumer for one lane: polls fast when idle on SQLite, blocks on Redis."""
        defaults: dict[str, Any] = {"workers": 1, "periodic": lane == "slow", "initial_delay": 0.05}
        defaults["max_delay"] = 0.1 if lane == "fast" else 1.0
        return self.lanes[lane].create_consumer(**(defaults | options))


@functools.cache
def get_queues(queue_url: str) -> Queues:
    return Queues(queue_url)
