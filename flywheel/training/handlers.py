"""Which function runs each kind of job. Importing this loads torch (seconds), so only job-running
processes do: the worker, once, before it forks its lanes, and ``labelwheel mine``."""

from __future__ import annotations

from typing import Any

from flywheel.jobs.runner import Handlers, JobContext
from flywheel.monitoring.drift import run_drift
from flywheel.quality import run_quality_reports
from flywheel.training.box_mining import run_box_mining
from flywheel.training.compression import run_distill, run_quantize
from flywheel.training.detection_refresh import run_detection_refresh
from flywheel.training.label_quality import label_quality_job
from flywheel.training.mining import run_mining
from flywheel.training.refresh import run_embedding, run_export, run_refresh
from flywheel.training.training_job import run_training
from storage.models import JobKind, Project, TaskType


def _detection(ctx: JobContext) -> bool:
    with ctx.db.read_session() as session:
        return session.get_one(Project, ctx.project_id).task_type is TaskType.detection


def run_mine(ctx: JobContext) -> dict[str, Any]:
    """A mining pass: over boxes in a detection project, over labels otherwise."""
    return run_box_mining(ctx) if _detection(ctx) else run_mining(ctx)


def run_any_refresh(ctx: JobContext) -> dict[str, Any]:
    """A fresh update of the champion: its detector's heads fine-tuned, or its classifier's head refitted."""
    return run_detection_refresh(ctx) if _detection(ctx) else run_refresh(ctx)


HANDLERS: Handlers = {
    JobKind.train: run_training,
    JobKind.refresh: run_any_refresh,
    JobKind.embed: run_embedding,
    JobKind.export: run_export,
    JobKind.label_quality: label_quality_job,
    JobKind.mine: run_mine,
    JobKind.drift: run_drift,
    JobKind.distill: run_distill,
    JobKind.quantize: run_quantize,
    JobKind.quality_report: run_quality_reports,
}
