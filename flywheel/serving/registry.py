"""The model registry: versions, the champion, promotion and rollback, the model card and downloads.

Queries only: nothing here imports torch, so the API process can list and promote models cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from functools import partial
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from annotation.quality_reports import card_human_reference
from flywheel.serving.preprocess import MEAN, PREPROCESSING, STD
from storage.blobs import BlobStore
from storage.db import after_commit
from storage.errors import Conflict, Gone, NotFound
from storage.models import DatasetSnapshot, ModelKind, ModelStatus, ModelVersion, utcnow
from storage.projects import take_turns_on_project

PROMOTABLE = frozenset({ModelStatus.candidate, ModelStatus.retired, ModelStatus.champion})


class DownloadFormat(StrEnum):
    onnx = "onnx"
    weights = "weights"
    card = "card"


@dataclass(frozen=True)
class ModelFile:
    filename: str
    media_type: str
    data: bytes


def list_models(
    session: Session, *, project_id: int, kinds: tuple[ModelKind, ...] = (ModelKind.full,), limit: int = 100
) -> list[ModelVersion]:
    """The project's models of ``kinds``, newest first: by default the trainings (refreshed heads, one per burst
    of labels, are many; ask for them)."""
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.project_id == project_id, ModelVersion.kind.in_(kinds))
            .order_by(ModelVersion.id.desc())
            .limit(limit)
        )
    )


def get_model(session: Session, *, model_id: int) -> ModelVersion:
    model = session.get(ModelVersion, model_id)
    if model is None:
        raise NotFound(f"model {model_id} not found", code="model_not_found")
    return model


_CHAMPION = select(ModelVersion.id).where(  # built once: every task served asks it for its pre-label
    ModelVersion.project_id == bindparam("project_id"), ModelVersion.status == ModelStatus.champion
)


def champion(session: Session, *, project_id: int) -> ModelVersion | None:
    """The project's champion. Its id is looked up with a Core row and the model loaded only when there is one: most
    tasks served before the first model ask, and an empty ORM load costs about twice an empty Core one. Pending
    changes are flushed first, as an ORM query would (a promotion in the same session counts)."""
    session.flush()
    found = session.connection().execute(_CHAMPION, {"project_id": project_id}).first()
    return None if found is None else session.get(ModelVersion, found[0])


def serving_model(session: Session, *, project_id: int, best: ModelVersion | None = None) -> ModelVersion | None:
    """What answers predictions and pre-labels: the champion's newest refreshed head, else the champion (``best``,
    when the caller has it already)."""
    best = best or champion(session, project_id=project_id)
    if best is None:
        return None
    refreshed = session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.project_id == project_id,
            ModelVersion.parent_id == best.id,
            ModelVersion.kind == ModelKind.refresh,
            ModelVersion.status == ModelStatus.candidate,
        )
        .order_by(ModelVersion.id.desc())
        .limit(1)
    ).first()
    return refreshed or best


def serving_candidates(session: Session, *, project_id: int, earlier: int = 2) -> list[ModelVersion]:
    """Who answers, in order, when the one before cannot (its files are missing or broken): the serving model, the
    champion it refreshes, then the champions it replaced, newest first, up to ``earlier`` of them."""
    best = champion(session, project_id=project_id)
    if best is None:
        return []
    serving = serving_model(session, project_id=project_id, best=best)
    found = [serving] if serving is not None and serving.id != best.id else []
    found.append(best)
    model = best
    for _ in range(earlier):
        promotions = (model.decision or {}).get("promotions", [])
        replaced = promotions[-1].get("replaced") if promotions else None
        before = session.get(ModelVersion, replaced) if replaced is not None else None
        if before is None or before in found:
            break
        found.append(before)
        model = before
    return found


def prune_refreshed_heads(
    session: Session, blobs: BlobStore, *, project_id: int, keep: int, grace_seconds: float
) -> list[int]:
    """Drop the files of refreshed heads nobody needs any more; their rows stay for lineage. Kept: the serving
    head, the newest ``keep`` others, and any made within the grace period (a download may have just asked
    for it). Returns the pruned model ids.

    Blobs are content-addressed, so a file is deleted only when no model that keeps its files names it."""
    serving = serving_model(session, project_id=project_id)
    heads = list(
        session.scalars(
            select(ModelVersion)
            .where(
                ModelVersion.project_id == project_id,
                ModelVersion.kind == ModelKind.refresh,
                ModelVersion.files_pruned_at.is_(None),
            )
            .order_by(ModelVersion.id.desc())
        )
    )
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    others = [m for m in heads if serving is None or m.id != serving.id]
    doomed = [m for m in others[keep:] if m.created_at <= cutoff]
    if not doomed:
        return []
    for model in doomed:
        model.files_pruned_at = utcnow()
    session.flush()
    files = {sha for m in doomed for sha in (m.head_sha256, m.onnx_sha256, m.weights_sha256) if sha is not None}
    still_used: set[str | None] = set()
    for column in (ModelVersion.head_sha256, ModelVersion.onnx_sha256, ModelVersion.weights_sha256):
        still_used |= set(
            session.scalars(select(column).where(column.in_(files), ModelVersion.files_pruned_at.is_(None)))
        )
    for sha in files - still_used:  # rows first, files after: a crash in between only leaves a stray file
        after_commit(session, partial(blobs.delete, sha))
    return [m.id for m in doomed]


class Deployment(StrEnum):
    shadow = "shadow"  # predicts on a copy of live traffic after the answer; logged, never returned
    canary = "canary"  # answers ``traffic_share`` of the requests


def deploy(session: Session, *, model: ModelVersion, mode: Deployment | None, share: float | None) -> ModelVersion:
    """Put a finished full model in shadow or canary (one canary per project), or take it out (``mode`` None)."""
    if mode is not None:
        if model.kind != ModelKind.full or model.status not in (ModelStatus.candidate, ModelStatus.retired):
            raise Conflict(
                f"model {model.id} is a {model.kind.value} model, {model.status.value}: only a finished full model "
                "that is not the champion can be a shadow or a canary",
                code="model_not_deployable",
            )
        if model.onnx_sha256 is None or model.head_sha256 is None:
            raise Conflict(f"model {model.id} has no ONNX file to serve with", code="model_not_ready")
        if mode is Deployment.canary:
            # Two requests making two models canary at once take turns on the project row (PostgreSQL; SQLite
            # writers take turns anyway), so the second one sees the first's canary.
            take_turns_on_project(session, project_id=model.project_id)
            other = session.scalars(
                select(ModelVersion).where(
                    ModelVersion.project_id == model.project_id,
                    ModelVersion.deployment == Deployment.canary.value,
                    ModelVersion.id != model.id,
                )
            ).first()
            if other is not None:
                raise Conflict(
                    f"model {other.id} is the project's canary already: take it out first (deployment null)",
                    code="canary_exists",
                )
    model.deployment = mode.value if mode is not None else None
    model.traffic_share = share if mode is Deployment.canary else None
    session.flush()
    return model


def deployed(session: Session, *, project_id: int) -> list[ModelVersion]:
    """The project's shadow and canary models."""
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.project_id == project_id, ModelVersion.deployment.is_not(None))
            .order_by(ModelVersion.id)
        )
    )


def promote(session: Session, *, model: ModelVersion, by_user: int | None, reason: str) -> ModelVersion:
    """Make ``model`` the project's champion (also an older one: a rollback); the old champion retires."""
    if model.kind != ModelKind.full:
        raise Conflict(
            "a refreshed head serves on top of its champion; promote a fully trained model instead",
            code="model_not_promotable",
        )
    if model.status not in PROMOTABLE:
        raise Conflict(f"model {model.id} is {model.status.value}; only finished models can be promoted")
    current = champion(session, project_id=model.project_id)
    if current is not None and current.id == model.id:
        return model
    if current is not None:
        current.status = ModelStatus.retired
        session.flush()  # the one-champion index must never see two
    model.status, model.promoted_at, model.promoted_by = ModelStatus.champion, utcnow(), by_user
    model.deployment = model.traffic_share = None  # promoted from shadow or canary: it serves all traffic now
    history = list((model.decision or {}).get("promotions", []))
    history.append(
        {"at": utcnow().isoformat(), "by_user": by_user, "reason": reason, "replaced": current and current.id}
    )
    model.decision = {**(model.decision or {}), "promotions": history}
    session.flush()
    return model


def model_card(session: Session, *, model: ModelVersion) -> dict[str, Any]:
    """Everything an engineer needs to trust or reproduce a model: metrics, data, lineage and the decision."""
    snapshot = session.get(DatasetSnapshot, model.snapshot_id) if model.snapshot_id else None
    lineage: list[dict[str, Any]] = []
    parent_id = model.parent_id
    while parent_id is not None and len(lineage) < 50:
        parent = session.get(ModelVersion, parent_id)
        if parent is None:
            break
        lineage.append({"id": parent.id, "kind": parent.kind.value, "status": parent.status.value})
        parent_id = parent.parent_id
    return {
        "id": model.id,
        "project_id": model.project_id,
        "kind": model.kind.value,
        "status": model.status.value,
        "architecture": model.architecture,
        "labels": model.labels,
        "input": {
            "size": model.input_size,
            "layout": "NCHW float32",
            "preprocessing": PREPROCESSING,
            "mean": [round(float(v), 6) for v in MEAN],
            "std": [round(float(v), 6) for v in STD],
        },
        "hyperparameters": model.hyperparameters,
        "seed": model.seed,
        "snapshot": snapshot
        and {
            "id": snapshot.id,
            "content_sha256": snapshot.content_sha256,
            "item_count": snapshot.item_count,
            "stats": snapshot.stats,
        },
        "parent_id": model.parent_id,
        "lineage": lineage,
        "metrics": model.metrics,
        # The annotators' accuracy against consensus on the test images, beside the model's, now.
        "human_reference": card_human_reference(session, project_id=model.project_id),
        "decision": model.decision,
        "labels_through": model.labels_through,  # the newest annotation id it has seen (a refresh: trained on)
        "artefacts": {
            "weights_sha256": model.weights_sha256,
            "onnx_sha256": model.onnx_sha256,
            "files_pruned_at": model.files_pruned_at and model.files_pruned_at.isoformat(),
        },
        "created_at": model.created_at.isoformat(),
        "finished_at": model.finished_at and model.finished_at.isoformat(),
        "promoted_at": model.promoted_at and model.promoted_at.isoformat(),
    }


class FilesPending(Conflict):
    """A refreshed head's stand-alone files are made when first asked for (it serves without them)."""

    code = "model_files_pending"


def model_file(session: Session, blobs: BlobStore, *, model: ModelVersion, format: DownloadFormat) -> ModelFile:
    """The file a download of ``model`` serves: ``FilesPending`` while a refreshed head has none yet, ``Gone``
    once an old head's files were pruned."""
    if model.status in (ModelStatus.training, ModelStatus.failed):
        raise Conflict(f"model {model.id} is {model.status.value}; nothing to download", code="model_not_ready")
    name = f"labelwheel-project{model.project_id}-model{model.id}"
    if format == DownloadFormat.card:
        card = json.dumps(model_card(session, model=model), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return ModelFile(f"{name}.json", "application/json", card.encode())
    if model.files_pruned_at is not None:
        raise Gone(
            f"model {model.id} is a refreshed head that stopped serving; its files were pruned "
            f"({model.files_pruned_at.isoformat()}), its card stays; download the serving model instead",
            code="model_files_pruned",
        )
    sha256 = model.onnx_sha256 if format == DownloadFormat.onnx else model.weights_sha256
    if sha256 is None:
        raise FilesPending(f"the {format.value} file of model {model.id} is being made; try again in a few seconds")
    suffix = "onnx" if format == DownloadFormat.onnx else "pt"
    return ModelFile(f"{name}.{suffix}", "application/octet-stream", blobs.read_bytes(sha256))
