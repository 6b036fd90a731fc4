"""The worker: one process per queue lane, each a huey consumer running job rows.

``labelwheel worker`` starts it on any machine that reaches the database, the blob store and the
queue; ``labelwheel serve`` starts one beside the API for the embedded default.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from dataclasses import dataclass
from types import FrameType

from sqlalchemy import select

from flywheel import jobs
from flywheel.queue import LANES, Queues, get_queues
from storage.blobs import BlobStore, blob_store_from_settings
from storage.db import Database
from storage.models import Project
from storage.settings import Settings, get_settings

logger = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    db: Database
    blobs: BlobStore
    queues: Queues


_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    """This process's stores, built once from the environment's settings."""
    global _runtime
    if _runtime is None:
        settings = get_settings()
        _runtime = WorkerRuntime(
            settings=settings,
            db=Database(settings.resolved_database_url),
            blobs=blob_store_from_settings(settings),
            queues=get_queues(settings.resolved_queue_url),
        )
    return _runtime


def run_job(job_id: int) -> None:
    """The queue task: run the job row (if it is still queued); then start the project's next training."""
    rt = runtime()
    jobs.execute_job(rt.db, rt.blobs, rt.settings, rt.queues, job_id=job_id)


def check_project(project_id: int) -> None:
    """The queue task sent when labels change: the policy decides on a refresh or a training."""
    from flywheel.policy import check_project as decide

    rt = runtime()
    decide(rt.db, rt.queues, project_id=project_id)


def upkeep() -> None:
    """Every minute: running jobs whose worker stopped go back to the queue, and every project's policy is
    checked (labels that arrived by import, or a notice that was lost, still lead to training)."""
    rt = runtime()
    for job_id, kind in jobs.reap_jobs(rt.db, stale_seconds=rt.settings.job_stale_seconds, include_queued=False):
        rt.queues.run_job(job_id, kind)
    with rt.db.read_session() as session:
        project_ids = list(session.scalars(select(Project.id)))
    for project_id in project_ids:
        rt.queues.check_project(project_id)


def run_lane(lane: str) -> None:
    """One lane's consumer, in its own process (huey installs its signal handlers here)."""
    from service.observability import configure_logging

    rt = runtime()
    configure_logging(rt.settings.log_level)
    import torch

    torch.set_num_threads(rt.settings.train_threads)
    jobs.load_handlers()
    logger.info("worker lane %s consuming %s", lane, rt.queues.url.split("@")[-1])
    rt.queues.consumer(lane).run()


def run_worker(lanes: tuple[str, ...] = LANES) -> int:
    """Recover jobs a dead worker left behind, then run one consumer process per lane until stopped."""
    rt = runtime()
    for job_id, kind in jobs.reap_jobs(rt.db, stale_seconds=rt.settings.job_stale_seconds, include_queued=True):
        rt.queues.run_job(job_id, kind)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_lane, args=(lane,), name=f"labelwheel-{lane}") for lane in lanes]
    for process in processes:
        process.start()

    def stop(signum: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.is_alive() and process.pid:
                process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.join()
    return max((process.exitcode or 0) for process in processes) if processes else 0
