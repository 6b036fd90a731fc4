"""Who answers a ``/predict`` request and who predicts beside it: the canary takes its share of the requests
(chosen by the first input's hash, so the same image always meets the same model), shadows predict on a copy of
every request after the answer, and the serving model does so beside a canary's answers, so every model in
deployment is compared with the serving one on the same inputs."""

from __future__ import annotations

from sqlalchemy.orm import Session

from flywheel.serving.registry import Deployment, deployed, serving_model
from storage.models import ModelVersion


def share_point(sha256: str) -> float:
    """Where an input falls in [0, 1): the first 32 bits of the hex digest given (a slice of it picks others)."""
    return int(sha256[:8], 16) / 0x1_0000_0000


def canary_for(session: Session, *, project_id: int, hashes: list[str]) -> ModelVersion | None:
    """The project's canary when this request falls in its share."""
    canary = next((m for m in deployed(session, project_id=project_id) if m.deployment == Deployment.canary), None)
    if canary is None or not hashes or share_point(hashes[0]) >= (canary.traffic_share or 0.0):
        return None
    return canary


def shadows_for(session: Session, *, project_id: int, answered_by: ModelVersion) -> list[int]:
    """The models that predict on a copy of this request after the answer: the shadows, and the serving model
    when a canary answered."""
    shadows = [
        m.id
        for m in deployed(session, project_id=project_id)
        if m.deployment == Deployment.shadow and m.id != answered_by.id
    ]
    if answered_by.deployment == Deployment.canary:
        serving = serving_model(session, project_id=project_id)
        if serving is not None:
            shadows.append(serving.id)
    return shadows
