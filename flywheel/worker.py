"""The worker process: the top of the job system, where the transport, the job rows, the policy, the
schedules and the job bodies (``flywheel.training.handlers``) meet. One process per queue lane, each a
huey consumer, watched by a supervisor that restarts a lane that dies.

``labelwheel worker`` starts it on any machine that reaches the database, the blob store and the
queue; ``labelwheel serve`` starts one beside the API for the embedded default.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from flywheel.jobs import runner
from flywheel.jobs.transport import LANES, TaskBodies, Transport, get_transport
from flywheel.policy import start_policy_jobs
from flywheel.quality import start_quality_if_due
from flywheel.schedules import run_due_schedules
from flywheel.serving.registry import prune_refreshed_heads
from flywheel.supervisor import Supervisor
from storage.blobs import BlobStore, blob_store_from_settings
from storage.db import Database
from storage.logs import configure_logging
from storage.models import Project
from storage.projects import compact_counts
from storage.settings import Settings, get_settings

logger = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    db: Database
    blobs: BlobStore
    transport: Transport


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
            transport=get_transport(settings.resolved_queue_url),
        )
    return _runtime


def job_handlers() -> runner.Handlers:
    """The job bodies (torch, torchvision, albumentations: seconds of imports), loaded once per process."""
    from flywheel.training.handlers import HANDLERS

    return HANDLERS


def run_job_task(job_id: int) -> None:
    """Task body: run the job row (if it is still queued); then start the project's next training."""
    rt = runtime()
    runner.run_job(rt.db, rt.blobs, rt.settings, rt.transport, job_id=job_id, handlers=job_handlers())


def check_policy_task(project_id: int) -> None:
    """Task body, sent when labels change: the retraining policy decides on a refresh or a training, and outdated
    quality reports get a recompute."""
    rt = runtime()
    start_policy_jobs(rt.db, rt.transport, project_id=project_id)
    start_quality_if_due(rt.db, rt.transport, project_id=project_id)


def upkeep() -> None:
    """Every minute (``LABELWHEEL_UPKEEP_SECONDS``): due schedules start their jobs, every project's policy is
    checked (labels that arrived by import, or a notice that was lost, still lead to training), refreshed heads past
    their grace period lose their files even when no refresh follows, and the console's count rows are folded. Stale
    jobs are the supervisor's (every worker has one, whatever its lanes)."""
    rt = runtime()
    run_due_schedules(rt.db, rt.transport)
    with rt.db.read_session() as session:
        project_ids = list(session.scalars(select(Project.id)))
    for project_id in project_ids:
        with rt.db.session() as session:
            prune_refreshed_heads(
                session,
                rt.blobs,
                project_id=project_id,
                keep=rt.settings.refresh_heads_kept,
                grace_seconds=rt.settings.refresh_prune_grace_seconds,
            )
        with rt.db.session() as session:
            compact_counts(session, project_id=project_id)
        rt.transport.enqueue_policy_check(project_id)


def run_lane(lane: str) -> None:
    """One lane's consumer, in its own process (huey installs its signal handlers here)."""
    exit_with_parent()
    rt = runtime()
    configure_logging(rt.settings.log_level)
    if lane == "slow" and rt.settings.job_niceness:
        os.nice(rt.settings.job_niceness)  # long jobs are background work: labeling requests come first
    import torch

    torch.set_num_threads(rt.settings.train_threads)
    rt.transport.serve(TaskBodies(run_job=run_job_task, check_policy=check_policy_task, upkeep=upkeep))
    logger.info("worker lane %s consuming %s", lane, rt.transport.url.split("@")[-1])
    rt.transport.consumer(lane, upkeep_seconds=rt.settings.upkeep_seconds).run()


def exit_with_parent() -> None:
    """Stop this process (SIGTERM, handled as a normal stop) when the process that started it is gone.

    `serve` is stopped by a signal that ends it without running cleanup code, and a lane must not
    outlive its worker: both watch their parent instead of relying on being told.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_worker(lanes: tuple[str, ...] = LANES, *, with_parent: bool = False) -> int:
    """Run one consumer process per lane under a supervisor (``flywheel.supervisor``) until stopped (with
    ``with_parent``, also when the parent exits); non-zero when a lane kept dying.

    The job code (torch, torchvision, albumentations: seconds of imports) is loaded once here and the
    lanes are forked from this process, so they (and their restarts) start at once.
    """
    if with_parent:
        exit_with_parent()  # before the seconds of imports: a SIGTERM then simply ends this process
    job_handlers()
    return Supervisor(lanes, target=run_lane, settings=get_settings()).run()
