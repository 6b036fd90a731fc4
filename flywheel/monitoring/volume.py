"""How much ``/predict`` traffic the prediction log holds, per UTC day: answers sent, shadow answers, fallbacks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import PredictionLog, utcnow


def predictions_per_day(session: Session, *, project_id: int, days: int = 30) -> list[dict[str, Any]]:
    """The last ``days`` UTC days with logged predictions, oldest first; one range query per day on
    ``ix_prediction_logs_project_id_created_at`` (no dialect's date function)."""
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    found = []
    for back in range(days - 1, -1, -1):
        start = today - timedelta(days=back)
        rows = session.execute(
            select(PredictionLog.role, PredictionLog.fallback, func.count())
            .where(
                PredictionLog.project_id == project_id,
                PredictionLog.created_at >= start,
                PredictionLog.created_at < start + timedelta(days=1),
            )
            .group_by(PredictionLog.role, PredictionLog.fallback)
        ).all()
        if rows:
            served = sum(count for role, _, count in rows if role == "served")
            found.append(
                {
                    "day": start.date().isoformat(),
                    "served": served,
                    "fallback": sum(count for role, fallback, count in rows if role == "served" and fallback),
                    "shadow": sum(count for role, _, count in rows if role == "shadow"),
                }
            )
    return found
