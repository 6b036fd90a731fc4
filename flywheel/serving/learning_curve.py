"""The learning curve: each trained version's headline test metric against the labels behind it, with its promotion
decision and the promotions by hand (rollbacks among them), in one query for the console's models page."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import DatasetSnapshot, ModelKind, ModelVersion

# The metric a version is judged by: a classifier's accuracy, else the first a detector's card carries.
HEADLINE_METRICS = ("test_accuracy", "map50", "map", "mAP@.5", "mAP")


def headline_metric(metrics: dict[str, Any] | None) -> tuple[str | None, float | None]:
    """(name, value) of the metric a version's card leads with; (None, None) before it was evaluated."""
    for name in HEADLINE_METRICS:
        if isinstance((metrics or {}).get(name), int | float):
            return name, float(metrics[name])  # type: ignore[index]
    return None, None


def learning_curve(session: Session, *, project_id: int) -> list[dict[str, Any]]:
    """Trained versions, oldest first: labels in their snapshot, headline metric, baseline, status, the automatic
    decision (rule, reason, McNemar p-value) and every promotion with who, why and which champion it replaced."""
    rows = session.execute(
        select(ModelVersion, DatasetSnapshot.item_count)
        .outerjoin(DatasetSnapshot, DatasetSnapshot.id == ModelVersion.snapshot_id)
        .where(ModelVersion.project_id == project_id, ModelVersion.kind == ModelKind.full)
        .order_by(ModelVersion.id)
    ).all()
    points = []
    for model, labels in rows:
        metrics, decision = model.metrics or {}, model.decision or {}
        metric, value = headline_metric(metrics)
        points.append(
            {
                "model_id": model.id,
                "status": model.status.value,
                "created_at": model.created_at,
                "labels": labels,
                "metric": metric,
                "value": value,
                "baseline": metrics.get("baseline_accuracy"),
                "promoted": bool(decision.get("promote")),
                "rule": decision.get("rule"),
                "reason": decision.get("reason"),
                "p_value": decision.get("p_value"),
                "promotions": decision.get("promotions", []),
            }
        )
    return points
