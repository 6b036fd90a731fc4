"""Evaluation on the fixed test split, and the paired test that decides promotion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROMOTION_ALPHA = 0.05
PROMOTION_TOLERANCE = 0.005  # half a point of accuracy
BASELINE_RULE = "always the test split's most frequent class (baseline_label)"


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    # Always answering the test split's most frequent class: what a model must beat to have learned anything
    # (the training split's majority can score near zero on a balanced test split and mean nothing).
    baseline_accuracy: float
    baseline_label: str
    per_class: dict[str, dict[str, float | None]]  # label -> precision, recall, f1 (None: undefined), support
    confusion: list[list[int]]  # rows: true label, columns: predicted, in label-set order
    wrong: list[int]  # positions of the test items the model gets wrong


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, *, labels: list[str]) -> Evaluation:
    """Metrics of predictions ``y_pred`` (class indices) against ``y_true`` on the test split. A metric with
    nothing to divide by is ``None``, not 0: recall and F1 of a class with no test image, precision of a class
    never predicted."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # see _binomtest

    if len(y_true) == 0:
        raise ValueError("the test split has no labeled images yet")
    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=np.nan
    )
    majority = int(np.bincount(y_true, minlength=len(labels)).argmax())
    return Evaluation(
        accuracy=float((y_true == y_pred).mean()),
        baseline_accuracy=float((y_true == majority).mean()),
        baseline_label=labels[majority],
        per_class={
            label: {
                "precision": _defined(p),
                "recall": _defined(r) if s else None,
                "f1": _defined(f) if s else None,
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        confusion=confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        wrong=[int(i) for i in np.flatnonzero(y_true != y_pred)],
    )


def _defined(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    rule: str  # what decided: "not worse", "below the champion", "significantly worse"
    candidate_accuracy: float
    champion_accuracy: float
    tolerance: float  # how far below the champion's accuracy a candidate may be and still replace it
    champion_only_right: int  # test items only the champion gets right
    candidate_only_right: int  # test items only the candidate gets right
    p_value: float  # McNemar's exact test, two-sided
    reason: str


def _binomtest(successes: int, trials: int) -> float:
    """scipy and scikit-learn are imported when first used: the API process imports this module (shadow and canary
    comparisons), and importing them took about half of its start-up (seconds on a loaded 2-core machine)."""
    from scipy.stats import binomtest

    return float(binomtest(successes, trials, 0.5).pvalue)


def decide_promotion(
    champion_correct: np.ndarray, candidate_correct: np.ndarray, *, tolerance: float = PROMOTION_TOLERANCE
) -> PromotionDecision:
    """On the same test items, the candidate replaces the champion only when it is neither below the champion's
    accuracy by more than ``tolerance`` (a point estimate: on a small test split a real regression is rarely
    *significant*, and must not get through for that) nor significantly worse by McNemar's exact test on the
    discordant pairs (p < 0.05). An exact tie promotes: the candidate has seen more labels."""
    if champion_correct.shape != candidate_correct.shape:
        raise ValueError("both models must be judged on the same test items")
    b = int(np.sum(champion_correct & ~candidate_correct))
    c = int(np.sum(candidate_correct & ~champion_correct))
    p_value = _binomtest(min(b, c), b + c) if b + c else 1.0
    candidate, held = float(candidate_correct.mean()), float(champion_correct.mean())
    pairs = f"champion alone right on {b} items, candidate alone on {c} (McNemar p={p_value:.3g})"
    accuracies = f"{candidate:.3f} vs the champion's {held:.3f}"
    if b > c and p_value < PROMOTION_ALPHA:
        rule, reason = "significantly worse", f"significantly worse: {accuracies}; {pairs}"
    elif candidate < held - tolerance - 1e-12:
        rule = "below the champion"
        reason = f"below the champion by more than {tolerance:.3f}: {accuracies}; {pairs}"
    else:
        rule = "not worse"
        reason = f"not worse (within {tolerance:.3f}): {accuracies}; {pairs}"
    return PromotionDecision(rule == "not worse", rule, candidate, held, tolerance, b, c, p_value, reason)
