"""Our Dawid-Skene EM against crowd-kit's ``DawidSkene`` on a synthetic crowd, and what it buys over majority vote."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from crowdkit.aggregation import DawidSkene

from annotation.dawid_skene import dawid_skene, one_coin, posterior_from_skills

CLASSES = 10
# The crowd of ../shared/design/TARGETS.md: five honest annotators, a uniform spammer, one who labels 7 as 1.
ACCURACIES = (0.95, 0.92, 0.90, 0.85, 0.70, "spammer", "seven-as-one")


def simulate(seed: int, items: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) rows of (item, annotator, label), three annotators per item; and the (N,) true classes."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, CLASSES, items)
    rows = []
    for i, true in enumerate(truth):
        for w in rng.choice(len(ACCURACIES), 3, replace=False):
            kind = ACCURACIES[w]
            if kind == "spammer":
                label = rng.integers(CLASSES)
            elif kind == "seven-as-one":
                label = 1 if true == 7 else (true if rng.random() < 0.95 else rng.integers(CLASSES))
            else:
                label = true if rng.random() < kind else rng.choice([c for c in range(CLASSES) if c != true])
            rows.append((i, w, label))
    return np.array(rows), truth


def ours(rows: np.ndarray, items: int, **options):
    return dawid_skene(
        rows[:, 0], rows[:, 1], rows[:, 2], n_items=items, n_workers=len(ACCURACIES), n_classes=CLASSES, **options
    )


def crowdkit_fit(rows: np.ndarray, true_labels: pd.Series | None = None, **options) -> DawidSkene:
    frame = pd.DataFrame(rows, columns=["task", "worker", "label"])
    return DawidSkene(**options).fit(frame, true_labels)


def crowdkit_confusion(model: DawidSkene, worker: int) -> np.ndarray:
    """crowd-kit's errors_ as our (true class, answer) matrix; answers a worker never gave are 0 there."""
    errors = model.errors_.loc[worker].reindex(range(CLASSES)).fillna(0.0)[list(range(CLASSES))]
    return errors.to_numpy().T


@pytest.mark.parametrize("seed", [0, 1])
def test_same_iterations_give_crowd_kits_posteriors_and_confusion_matrices(seed):
    rows, truth = simulate(seed)
    # A negative tolerance never stops early: both run exactly 25 EM steps.
    reference = crowdkit_fit(rows, n_iter=25, tol=-1.0)
    fit = ours(rows, len(truth), smoothing=0.0, max_iter=25, tol=-1.0)
    probas = reference.probas_.sort_index()[list(range(CLASSES))].to_numpy()
    assert np.abs(fit.posteriors - probas).max() < 1e-8
    assert np.array_equal(fit.labels, reference.labels_.sort_index().to_numpy())
    for worker in range(len(ACCURACIES)):
        assert np.abs(fit.confusion[worker] - crowdkit_confusion(reference, worker)).max() < 1e-8
    assert np.allclose(fit.priors, reference.priors_.sort_index().to_numpy(), atol=1e-8)


def test_gold_answers_are_pinned_as_crowd_kit_does_with_true_labels():
    rows, truth = simulate(2, items=600)
    known = pd.Series(truth[:60], index=range(60))
    reference = crowdkit_fit(rows, known, n_iter=20, tol=-1.0)
    gold = np.full(len(truth), -1)
    gold[:60] = truth[:60]
    fit = ours(rows, len(truth), gold=gold, smoothing=0.0, max_iter=20, tol=-1.0)
    probas = reference.probas_.sort_index()[list(range(CLASSES))].to_numpy()
    assert np.abs(fit.posteriors - probas).max() < 1e-8
    assert np.array_equal(fit.labels[:60], truth[:60])


def test_with_its_defaults_it_converges_to_crowd_kits_answer_and_beats_majority_vote():
    rows, truth = simulate(3)
    reference = crowdkit_fit(rows)
    fit = ours(rows, len(truth))
    assert fit.converged and fit.iterations < 100
    crowdkit_labels = reference.labels_.sort_index().to_numpy()
    assert (fit.labels == crowdkit_labels).mean() > 0.995
    votes = np.zeros((len(truth), CLASSES))
    np.add.at(votes, (rows[:, 0], rows[:, 2]), 1)
    majority = votes.argmax(axis=1)
    accuracy, majority_accuracy = (fit.labels == truth).mean(), (majority == truth).mean()
    assert accuracy >= (crowdkit_labels == truth).mean() - 0.005
    assert accuracy >= majority_accuracy + 0.03
    sevens = truth == 7
    assert (fit.labels[sevens] == 7).mean() > (majority[sevens] == 7).mean() + 0.1
    # The confuser answers 1 for nearly every true 7; the skills rank the honest annotators in order.
    assert fit.confusion[6, 7, 1] > 0.9
    skill = fit.accuracy()
    assert list(np.argsort(-skill[:5])) == [0, 1, 2, 3, 4]
    assert skill[5] < 0.2


def test_a_posterior_from_stored_matrices_matches_the_fit_for_that_item():
    rows, truth = simulate(4, items=500)
    fit = ours(rows, len(truth), smoothing=0.0, max_iter=200, tol=1e-12)
    for item in range(20):
        answers = [(fit.confusion[w], label) for _, w, label in rows[rows[:, 0] == item]]
        assert np.allclose(posterior_from_skills(answers, fit.priors), fit.posteriors[item], atol=1e-6)


def test_a_one_coin_annotator_is_right_with_its_accuracy():
    matrix = one_coin(0.8, 5)
    assert np.allclose(matrix.sum(axis=1), 1) and np.allclose(np.diag(matrix), 0.8)
    posterior = posterior_from_skills([(matrix, 2)], np.full(5, 0.2))
    assert posterior[2] == pytest.approx(0.8)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="at least one label or a gold class"):
        dawid_skene(np.array([0]), np.array([0]), np.array([1]), n_items=2, n_workers=1, n_classes=2)
    with pytest.raises(ValueError, match="labels must be indices"):
        dawid_skene(np.array([0]), np.array([0]), np.array([2]), n_items=1, n_workers=1, n_classes=2)
    with pytest.raises(ValueError, match="two classes"):
        dawid_skene(np.array([0]), np.array([0]), np.array([0]), n_items=1, n_workers=1, n_classes=1)
