"""Drift: has what ``/predict`` sees moved away from what the champion was trained on?

A ``drift`` job compares the embeddings of a window of logged predictions (the newest ``monitoring.drift_window``,
or those of the last ``drift_window_hours``) with those of the project's own images that the champion did not train
on (its test split and the unlabeled pool; production captures left out), all from the champion's own backbone: the
images it trained on would look different to it even without drift, as it has fitted them. Three comparisons: a
domain classifier (logistic regression, scikit-learn) telling the two apart, scored by its cross-validated ROC AUC
(0.5: indistinguishable); the maximum mean discrepancy with an RBF kernel and a permutation test's p-value; and a
chi-square test of the predicted labels' histogram against the training labels'. The window is ``drift`` when the
AUC is above ``drift_auc`` or the MMD p-value below ``drift_p``; each run is one point of the project's drift
series, with the inputs the domain classifier finds least like the project's images.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from scipy.stats import chisquare
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.serving.registry import champion
from flywheel.training.snapshots import load_items
from storage.models import (
    DatasetSnapshot,
    DriftPoint,
    Embedding,
    Image,
    ImageSource,
    PredictionLog,
    Project,
    Split,
    utcnow,
)
from storage.projects import MonitoringSettings, project_settings

REFERENCE_IMAGES = 1000  # the project's images compared with, at most (a seeded sample)
PERMUTATIONS = 200
MOST_DRIFTED = 12
MIN_WINDOW = 20
MAX_WINDOW = 2000  # logged predictions compared at most (a seeded sample of a larger window)
SEED = 0


@dataclass(frozen=True)
class DriftScores:
    domain_auc: float
    mmd: float
    mmd_p: float
    production_scores: np.ndarray  # per window row: the domain classifier's out-of-fold P(production)


def drift_scores(reference: np.ndarray, window: np.ndarray, *, seed: int = SEED) -> DriftScores:
    """The domain classifier's cross-validated AUC and the MMD permutation test of two sets of embeddings."""
    features = np.concatenate([reference, window]).astype(np.float64)
    is_window = np.r_[np.zeros(len(reference)), np.ones(len(window))]
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    scores = cross_val_predict(classifier, features, is_window, cv=folds, method="predict_proba")[:, 1]
    mmd, p = mmd_test(reference, window, seed=seed)
    return DriftScores(float(roc_auc_score(is_window, scores)), mmd, p, scores[len(reference) :])


def mmd_test(
    x: np.ndarray, y: np.ndarray, *, permutations: int = PERMUTATIONS, seed: int = SEED
) -> tuple[float, float]:
    """The unbiased MMD² of ``x`` and ``y`` with an RBF kernel (bandwidth: the median pairwise distance) and the
    share of label permutations that give at least as large a value (with the +1 correction)."""
    joined = np.concatenate([x, y]).astype(np.float64)
    squared = np.sum(joined**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * joined @ joined.T, 0)
    upper = distances[np.triu_indices(len(joined), k=1)]
    bandwidth = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-distances / bandwidth)
    np.fill_diagonal(kernel, 0.0)
    n = len(x)

    def statistic(order: np.ndarray) -> float:
        k = kernel[np.ix_(order, order)]
        m = len(order) - n
        return float(k[:n, :n].sum() / (n * (n - 1)) + k[n:, n:].sum() / (m * (m - 1)) - 2 * k[:n, n:].sum() / (n * m))

    observed = statistic(np.arange(len(joined)))
    rng = np.random.default_rng(seed)
    larger = sum(statistic(rng.permutation(len(joined))) >= observed for _ in range(permutations))
    return observed, (larger + 1) / (permutations + 1)


def label_shift_p(predicted: list[str], trained: dict[str, int]) -> float | None:
    """The chi-square test's p-value of the predicted labels' counts against the training labels' shares; None
    when fewer than two training labels can be compared."""
    labels = [label for label, count in trained.items() if count > 0]
    if len(labels) < 2:
        return None
    seen = Counter(label for label in predicted if label in trained)
    observed = np.array([seen[label] for label in labels], dtype=float)
    if observed.sum() == 0:
        return None
    shares = np.array([trained[label] for label in labels], dtype=float)
    return float(chisquare(observed, shares / shares.sum() * observed.sum()).pvalue)


def run_drift(ctx: JobContext) -> dict[str, Any]:
    with ctx.db.read_session() as session:
        project = session.get_one(Project, ctx.project_id)
        settings = project_settings(project).monitoring
        best = champion(session, project_id=ctx.project_id)
        if best is None or best.snapshot_id is None:
            raise JobFailed(f"project {ctx.project_id} has no champion yet: drift is measured against its training")
        rows = _window(session, ctx.project_id, best.id, settings)
        if len(rows) < MIN_WINDOW:
            raise JobFailed(
                f"only {len(rows)} logged predictions of champion {best.id} in the window (at least {MIN_WINDOW} "
                "needed): send more /predict traffic, or widen monitoring.drift_window_hours"
            )
        snapshot = session.get_one(DatasetSnapshot, best.snapshot_id)
        _, items = load_items(ctx.blobs, snapshot)
        trained_on = {item.image_id for item in items if item.split is Split.train}
        unseen = session.execute(
            select(Image.id, Image.sha256)
            .join(Embedding, (Embedding.image_id == Image.id) & (Embedding.model_id == best.id))
            .where(Image.project_id == ctx.project_id, Image.source != ImageSource.production)
            .order_by(Image.id)
        ).all()
        window_hashes = {row.input_sha256 for row in rows}  # an input is not its own reference
        candidates = [
            image_id for image_id, sha256 in unseen if image_id not in trained_on and sha256 not in window_hashes
        ]
        rng = np.random.default_rng(SEED)
        ids = sorted(rng.choice(candidates, size=min(REFERENCE_IMAGES, len(candidates)), replace=False).tolist())
        vectors = session.scalars(
            select(Embedding.vector).where(Embedding.model_id == best.id, Embedding.image_id.in_(ids))
        ).all()
    if len(vectors) < MIN_WINDOW:
        raise JobFailed(
            f"only {len(vectors)} of the project's own images that champion {best.id} did not train on have cached "
            f"embeddings (at least {MIN_WINDOW} needed): upload more images, or run an embed job first "
            '(POST .../jobs {"kind": "embed"})'
        )
    ctx.progress(0.2, f"comparing {len(rows)} predictions with {len(vectors)} training images")
    reference = np.stack([np.frombuffer(v, dtype=np.float32) for v in vectors])
    window = np.stack([np.frombuffer(row.embedding or b"", dtype=np.float32) for row in rows])  # NULLs left out
    scores = drift_scores(reference, window)
    ctx.progress(0.9, "storing the result")
    trained = Counter(item.label for item in items if item.split is Split.train)
    chi2_p = label_shift_p([row.label for row in rows if row.label is not None], dict(trained))
    status = "drift" if scores.domain_auc > settings.drift_auc or scores.mmd_p < settings.drift_p else "ok"
    order = np.argsort(-scores.production_scores)[:MOST_DRIFTED]
    most = [
        {
            "log_id": rows[i].id,
            "input_sha256": rows[i].input_sha256,
            "image_id": rows[i].image_id,
            "score": round(float(scores.production_scores[i]), 4),
        }
        for i in order
    ]
    with ctx.db.session() as session:
        point = DriftPoint(
            project_id=ctx.project_id,
            job_id=ctx.job_id,
            champion_id=best.id,
            window_start=min(row.created_at for row in rows),
            window_end=max(row.created_at for row in rows),
            predictions=len(rows),
            reference=len(vectors),
            status=status,
            domain_auc=scores.domain_auc,
            mmd=scores.mmd,
            mmd_p=scores.mmd_p,
            label_chi2_p=chi2_p,
            most_drifted=most,
        )
        session.add(point)
        session.flush()
        point_id = point.id
    return {
        "drift_point_id": point_id,
        "status": status,
        "domain_auc": round(scores.domain_auc, 4),
        "mmd_p": round(scores.mmd_p, 4),
        "message": f"{status}: domain classifier AUC {scores.domain_auc:.3f}, MMD p {scores.mmd_p:.3f} over "
        f"{len(rows)} predictions",
    }


def _window(session: Session, project_id: int, champion_id: int, settings: MonitoringSettings) -> list[PredictionLog]:
    """The logged predictions to compare: embedded by the champion's backbone, newest first; at most
    ``MAX_WINDOW`` of them. Only the ids of a larger window are read to draw the sample."""
    query = (
        select(PredictionLog.id)
        .where(
            PredictionLog.project_id == project_id,
            PredictionLog.backbone_id == champion_id,
            PredictionLog.embedding.is_not(None),
        )
        .order_by(PredictionLog.id.desc())
    )
    if settings.drift_window_hours is not None:
        query = query.where(PredictionLog.created_at >= utcnow() - timedelta(hours=settings.drift_window_hours))
    ids = list(session.scalars(query.limit(settings.drift_window if settings.drift_window_hours is None else None)))
    if len(ids) > MAX_WINDOW:  # the tests' cost grows with the square of the rows: a seeded sample stands for all
        ids = [ids[i] for i in sorted(np.random.default_rng(SEED).choice(len(ids), MAX_WINDOW, replace=False))]
    chosen = select(PredictionLog).where(PredictionLog.id.in_(ids)).order_by(PredictionLog.id.desc())
    return list(session.scalars(chosen)) if ids else []
