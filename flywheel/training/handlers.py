"""Which function runs each kind of job. Importing this loads torch (seconds), so only job-running
processes do: the worker, once, before it forks its lanes, and ``labelwheel mine``."""

from __future__ import annotations

from typing import Any

from flywheel.jobs.runner import Handlers, JobContext
from flywheel.monitoring.drift import run_drift
from flywheel.quality import run_quality_reports
from flywheel.training.box_mining import run_box_mining
from flywheel.training.compression import run_distill, run_quantize
from flywheel.training.label_quality import label_quality_job
from flywheel.training.mining import run_mining
from flywheel.training.refresh import run_embedding, run_export, run_refresh
from flywheel.training.training_job import run_training
from storage.models import JobKind, Project, TaskType


def run_mine(ctx: JobContext) -> dict[str, Any]:
    """A mining pass: over boxes in a detection project, over labels otherwise."""
    with ctx.db.read_session() as session:
        detection = session.get_one(Project, ctx.project_id).task_type is TaskType.detection
    return run_box_mining(ctx) if detection else run_mining(ctx)


HANDLERS: Handlers = {
    JobKind.train: run_training,
    JobKind.refresh: run_refresh,
    JobKind.embed: run_embedding,
    JobKind.export: run_export,
    JobKind.label_quality: label_quality_job,
    JobKind.mine: run_mine,
    JobKind.drift: run_drift,
    JobKind.distill: run_distill,
    JobKind.quantize: run_quantize,
    JobKind.quality_report: run_quality_reports,
}
