"""The learning curve: each trained version's headline test metric against the labels behind it, with its promotion
decision and the promotions by hand (rollbacks among them), in one query for the console's models page."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import DatasetSnapshot, ModelKind, ModelVersion

# The metric a version is judged by: a classifier's accuracy, else the first of these a detector's card carries
# (mAP@.5, what its promotion gate compares, on the cards the detection job writes).
HEADLINE_METRICS = ("test_accuracy", "test_map50", "map50", "map", "mAP@.5", "mAP")


def learning_curve(session: Session, *, project_id: int) -> list[dict[str, Any]]:
    """Trained versions, oldest first: labels in their snapshot, headline metric, baseline, status, the automatic
    decision (rule, reason, McNemar p-value) and every promotion with who, why and which champion it replaced.

    Only these fields are read out of the metrics and decision JSON (by the database), never the whole blobs, whose
    confusion matrices, training histories and misclassified images make 200 versions slow to load."""
    metrics, decision = ModelVersion.metrics, ModelVersion.decision
    rows = session.execute(
        select(
            ModelVersion.id,
            ModelVersion.status,
            ModelVersion.created_at,
            DatasetSnapshot.item_count,
            metrics["baseline_accuracy"].as_float(),
            metrics["baseline_map50"].as_float(),
            metrics["test_map50"].as_float(),
            metrics["test_map"].as_float(),
            decision["promote"].as_boolean(),
            decision["rule"].as_string(),
            decision["reason"].as_string(),
            decision["p_value"].as_float(),
            decision["promotions"].as_json(),
            *(metrics[name].as_float() for name in HEADLINE_METRICS),
        )
        .outerjoin(DatasetSnapshot, DatasetSnapshot.id == ModelVersion.snapshot_id)
        .where(ModelVersion.project_id == project_id, ModelVersion.kind == ModelKind.full)
        .order_by(ModelVersion.id)
    ).all()
    points = []
    for (
        model_id,
        status,
        created_at,
        labels,
        baseline,
        baseline_map50,
        map50,
        map_all,
        promoted,
        rule,
        reason,
        p_value,
        promotions,
        *values,
    ) in rows:
        metric, value = next(
            ((name, v) for name, v in zip(HEADLINE_METRICS, values, strict=True) if v is not None), (None, None)
        )
        points.append(
            {
                "model_id": model_id,
                "status": status.value,
                "created_at": created_at,
                "labels": labels,
                "metric": metric,
                "value": value,
                "baseline": baseline if baseline is not None else baseline_map50,
                "map50": map50,
                "map": map_all,
                "promoted": bool(promoted),
                "rule": rule,
                "reason": reason,
                "p_value": p_value,
                "promotions": promotions or [],
            }
        )
    return points
