"""Dawid-Skene consensus: each item's true-label posterior and each annotator's confusion matrix, by EM.

Majority vote counts every label the same; Dawid-Skene learns how each annotator answers for each
true class, so a careful annotator outweighs a careless one and a systematic confusion (every 7
labeled 1) stops outvoting the others. The EM follows Dawid & Skene (1979) as crowd-kit implements
it (majority-vote start, clipped probabilities, the evidence lower bound as stopping rule), so the
two agree on the same data (tests/test_dawid_skene.py); a small pseudo-count keeps early, thin
evidence from making any answer impossible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-10  # crowd-kit's floor for probabilities, so log() stays finite


@dataclass(frozen=True)
class DawidSkeneFit:
    posteriors: np.ndarray  # (N, K): P(true class k | every label of item i)
    confusion: np.ndarray  # (W, K, K): P(annotator w answers l | true class k), rows k
    priors: np.ndarray  # (K,): share of each true class
    counts: np.ndarray  # (W, K, K): expected number of items of true class k that w answered l
    iterations: int
    converged: bool

    @property
    def labels(self) -> np.ndarray:
        """(N,) most probable class of each item; a tie goes to the lower class index."""
        return self.posteriors.argmax(axis=1)

    def accuracy(self) -> np.ndarray:
        """(W,) expected share of each annotator's labels that are right (NaN for one without labels)."""
        totals = self.counts.sum(axis=(1, 2))
        correct = np.trace(self.counts, axis1=1, axis2=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return correct / totals


def _check(items: np.ndarray, workers: np.ndarray, labels: np.ndarray, n: int, w: int, k: int) -> None:
    if not (items.shape == workers.shape == labels.shape) or items.ndim != 1:
        raise ValueError("items, workers and labels must be 1-D arrays of the same length")
    if k < 2:
        raise ValueError("Dawid-Skene needs at least two classes")
    for name, values, bound in (("items", items, n), ("workers", workers, w), ("labels", labels, k)):
        if len(values) and (values.min() < 0 or values.max() >= bound):
            raise ValueError(f"{name} must be indices in [0, {bound})")


def dawid_skene(
    items: np.ndarray,
    workers: np.ndarray,
    labels: np.ndarray,
    *,
    n_items: int,
    n_workers: int,
    n_classes: int,
    gold: np.ndarray | None = None,
    smoothing: float = 0.01,
    max_iter: int = 100,
    tol: float = 1e-5,
) -> DawidSkeneFit:
    """Fit Dawid-Skene to M labels: ``labels[m]`` given by annotator ``workers[m]`` to item ``items[m]``.

    ``gold`` (N,) holds known true classes (-1 where unknown): those items' posteriors are pinned to
    the known class at every step, as crowd-kit does with ``true_labels``. ``smoothing`` is a
    pseudo-count added to every cell of every confusion matrix before normalising (0 reproduces
    crowd-kit). Stops when the evidence lower bound per label gains less than ``tol``.
    Every item needs at least one label or a gold class.
    """
    items, workers, labels = (np.asarray(a, dtype=np.int64) for a in (items, workers, labels))
    _check(items, workers, labels, n_items, n_workers, n_classes)
    gold = np.full(n_items, -1, dtype=np.int64) if gold is None else np.asarray(gold, dtype=np.int64)
    known = gold >= 0
    if gold.shape != (n_items,) or gold.max(initial=-1) >= n_classes:
        raise ValueError(f"gold must hold {n_items} class indices below {n_classes}, or -1")
    from scipy import sparse  # imported when first used: it took a tenth of the API process's start-up

    # One row per item, one column per (annotator, answer): E- and M-steps become two sparse products.
    answers = sparse.csr_matrix(
        (np.ones(len(items)), (items, workers * n_classes + labels)), shape=(n_items, n_workers * n_classes)
    )
    votes = sparse.csr_matrix((np.ones(len(items)), (items, labels)), shape=(n_items, n_classes)).toarray()
    totals = votes.sum(axis=1, keepdims=True)
    if np.any((totals[:, 0] == 0) & ~known):
        raise ValueError("every item needs at least one label or a gold class")

    def pin_gold(posteriors: np.ndarray) -> np.ndarray:
        posteriors[known] = np.eye(n_classes)[gold[known]]
        return posteriors

    def m_step(posteriors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = np.asarray(answers.T @ posteriors).reshape(n_workers, n_classes, n_classes).transpose(0, 2, 1)
        confusion = np.clip(counts + smoothing, EPS, None)
        confusion /= confusion.sum(axis=2, keepdims=True)
        return np.clip(posteriors.mean(axis=0), EPS, None), confusion, counts

    def log_joint(priors: np.ndarray, confusion: np.ndarray) -> np.ndarray:
        # (W*K answers, K true classes): log P(answer | true class)
        log_answer = np.log(confusion).transpose(0, 2, 1).reshape(n_workers * n_classes, n_classes)
        return np.log(priors) + np.asarray(answers @ log_answer)

    with np.errstate(invalid="ignore", divide="ignore"):
        posteriors = pin_gold(np.where(totals > 0, votes / totals, 0.0))
    priors, confusion, counts = m_step(posteriors)
    bound, iterations, converged = -np.inf, 0, False
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        joint = log_joint(priors, confusion)
        joint -= joint.max(axis=1, keepdims=True)
        posteriors = np.exp(joint)
        posteriors = pin_gold(posteriors / posteriors.sum(axis=1, keepdims=True))
        priors, confusion, counts = m_step(posteriors)
        clipped = np.clip(posteriors, EPS, None)
        new_bound = float(
            ((posteriors * log_joint(priors, confusion)).sum() - (clipped * np.log(clipped)).sum()) / max(len(items), 1)
        )
        if new_bound - bound < tol:
            converged = True
            break
        bound = new_bound
    return DawidSkeneFit(posteriors, confusion, priors, counts, iterations, converged)


def posterior_from_skills(answers: list[tuple[np.ndarray, int]], priors: np.ndarray) -> np.ndarray:
    """(K,) posterior of one item from fitted confusion matrices: ``answers`` pairs each annotator's
    (K, K) confusion matrix with the class index they answered. Used between fits, on every submission."""
    log_posterior = np.log(np.clip(priors, EPS, None))
    for confusion, answer in answers:
        log_posterior = log_posterior + np.log(np.clip(confusion[:, answer], EPS, None))
    log_posterior -= log_posterior.max()
    posterior = np.exp(log_posterior)
    return posterior / posterior.sum()


def one_coin(accuracy: float, n_classes: int) -> np.ndarray:
    """(K, K) confusion matrix of an annotator right with probability ``accuracy``, errors spread evenly."""
    accuracy = float(np.clip(accuracy, EPS, 1 - EPS))
    matrix = np.full((n_classes, n_classes), (1 - accuracy) / (n_classes - 1))
    np.fill_diagonal(matrix, accuracy)
    return matrix
