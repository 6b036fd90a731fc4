"""Running jobs in the test process through the worker's own runner, with the real job bodies."""

from __future__ import annotations

from flywheel.jobs.runner import run_job
from flywheel.training.handlers import HANDLERS
from storage.models import JobStatus


def run(app, job_id: int, on_progress=None) -> JobStatus | None:
    rt = app.state.runtime
    return run_job(
        rt.db, rt.blobs, rt.settings, rt.transport, job_id=job_id, handlers=HANDLERS, on_progress=on_progress
    )
