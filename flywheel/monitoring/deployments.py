"""Shadow and canary models compared with the serving model on the same inputs, from the prediction log.

Each logged answer of a model in deployment is paired with the serving side's answer to the same input of the same
request (a shadow's with the answer sent; a canary's with the serving model's, which predicts beside it). Over the
pairs: how often the two agree, their median model time per image, and, on the inputs captured into the pool that
people have labeled since, each one's accuracy with the promotion's paired test (McNemar's exact test on the
inputs only one of them gets right).
"""

from __future__ import annotations

from statistics import median
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from flywheel.serving.registry import deployed
from flywheel.training.evaluation import decide_promotion
from storage.models import Image, PredictionLog


def compare_deployed(session: Session, *, project_id: int) -> list[dict[str, Any]]:
    models = deployed(session, project_id=project_id)
    in_deployment = [m.id for m in models]
    found = []
    for model in models:
        mine, theirs = aliased(PredictionLog), aliased(PredictionLog)
        pairs = session.execute(
            select(mine.label, theirs.label, mine.latency_ms, theirs.latency_ms, Image.consensus_label)
            .join(
                theirs,
                (theirs.request_id == mine.request_id)
                & (theirs.input_sha256 == mine.input_sha256)
                & (theirs.role != mine.role)
                & theirs.model_id.not_in(in_deployment),
            )
            .outerjoin(Image, Image.id == mine.image_id)
            .where(mine.project_id == project_id, mine.model_id == model.id)
        ).all()
        labeled = [(a, b, truth) for a, b, _, _, truth in pairs if truth is not None]
        entry: dict[str, Any] = {
            "model_id": model.id,
            "deployment": model.deployment,
            "traffic_share": model.traffic_share,
            "compared": len(pairs),
            "agreement": sum(a == b for a, b, *_ in pairs) / len(pairs) if pairs else None,
            "latency_ms": median(p[2] for p in pairs) if pairs else None,
            "serving_latency_ms": median(p[3] for p in pairs) if pairs else None,
            "labeled": len(labeled),
            "accuracy": None,
            "serving_accuracy": None,
            "p_value": None,
            "verdict": None,
        }
        if labeled:
            correct = np.array([a == truth for a, _, truth in labeled])
            serving_correct = np.array([b == truth for _, b, truth in labeled])
            decision = decide_promotion(serving_correct, correct)
            entry |= {
                "accuracy": float(correct.mean()),
                "serving_accuracy": float(serving_correct.mean()),
                "p_value": decision.p_value,
                "verdict": decision.reason,
            }
        found.append(entry)
    return found
