"""Running one job in this process: claim its row, call its kind's handler with a heartbeat, record the outcome.

Handlers are given by the caller (``flywheel.training.handlers.HANDLERS`` in the worker and the CLI):
this module imports no job body, and so no torch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flywheel.jobs.rows import Claim, claim_job, finish_job, heartbeat, next_waiting_training
from flywheel.jobs.transport import Transport
from storage.blobs import BlobStore
from storage.db import Database
from storage.models import JobKind, JobStatus
from storage.settings import Settings

logger = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job cannot do its work for a reason a person can fix; the message says what and how."""


class JobCancelled(Exception):
    """Someone cancelled the job, or another worker took it over."""


@dataclass
class JobContext:
    """What a job handler gets: its parameters, the stores, and a way to report progress."""

    job_id: int
    project_id: int
    kind: JobKind
    params: dict[str, Any]
    attempt: int
    db: Database
    blobs: BlobStore
    settings: Settings
    transport: Transport
    fraction: float = 0.0
    message: str = "started"
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[[float, str], None] | None = None  # e.g. a command's progress bar

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress (written by the heartbeat); also the point where a cancellation takes effect."""
        self.fraction = min(max(fraction, 0.0), 1.0)
        if message is not None:
            self.message = message[:500]
        if self.on_progress is not None:
            self.on_progress(self.fraction, self.message)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled("cancelled")


Handler = Callable[[JobContext], dict[str, Any]]
Handlers = Mapping[JobKind, Handler]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_claimed(
    claim: Claim, *, context: JobContext, handlers: Handlers, worker: str, beat_seconds: float
) -> JobStatus:
    """Run a claimed job's handler with a heartbeat thread, and record how it ended."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(beat_seconds):
            try:
                alive = heartbeat(
                    context.db, job_id=claim.job_id, worker=worker, fraction=context.fraction, message=context.message
                )
            except Exception:
                logger.exception("heartbeat of job %s failed; trying again", claim.job_id)
                continue
            if not alive:
                context.cancelled.set()

    thread = threading.Thread(target=beat, name=f"heartbeat-{claim.job_id}", daemon=True)
    thread.start()
    outcome: dict[str, Any]
    try:
        result = handlers[claim.kind](context)
    except JobCancelled:
        status, outcome = JobStatus.cancelled, {"message": "cancelled"}
    except JobFailed as exc:
        status = JobStatus.failed
        outcome = {"message": str(exc), "error": str(exc), "trace": traceback.format_exc()}
    except Exception as exc:
        logger.exception("job %s (%s) failed", claim.job_id, claim.kind.value)
        status = JobStatus.failed
        error = f"{type(exc).__name__}: {exc}"
        outcome = {"message": error, "error": error, "trace": traceback.format_exc()}
    else:
        status, outcome = JobStatus.succeeded, {"message": str(result.get("message", "done")), "result": result}
    finally:
        stop.set()
        thread.join()
    finish_job(context.db, job_id=claim.job_id, worker=worker, status=status, **outcome)
    return status


def run_job(
    db: Database,
    blobs: BlobStore,
    settings: Settings,
    transport: Transport,
    *,
    job_id: int,
    handlers: Handlers,
    on_progress: Callable[[float, str], None] | None = None,
) -> JobStatus | None:
    """Claim and run one job in this process; None when it was not ours to run (gone, taken, or waiting).

    After a training, the project's next queued training (the follow-up) is enqueued.
    """
    worker = worker_name()
    claim = claim_job(db, job_id=job_id, worker=worker)
    if claim is None:
        return None
    context = JobContext(
        job_id=claim.job_id,
        project_id=claim.project_id,
        kind=claim.kind,
        params=claim.params,
        attempt=claim.attempt,
        db=db,
        blobs=blobs,
        settings=settings,
        transport=transport,
        on_progress=on_progress,
    )
    beat_seconds = min(2.0, settings.job_stale_seconds / 5)
    status = run_claimed(claim, context=context, handlers=handlers, worker=worker, beat_seconds=beat_seconds)
    logger.info("job %s (%s) %s", claim.job_id, claim.kind.value, status.value)
    if claim.kind == JobKind.train:
        waiting = next_waiting_training(db, project_id=claim.project_id)
        if waiting is not None:
            transport.enqueue_job(waiting, JobKind.train)
    return status
