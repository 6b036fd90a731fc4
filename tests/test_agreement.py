"""Agreement figures against the reference implementations, fed from raw ratings by another route.

The references get their inputs the way their own documentation builds them (statsmodels'
``aggregate_raters``, krippendorff's raters x units ``reliability_data`` with NaN for missing,
scikit-learn on each pair's shared items), so a mistake in how we tabulate ratings shows up.
"""

from __future__ import annotations

import itertools
import warnings

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from annotation.agreement import MIN_SHARED_ITEMS, ONE_CLASS, agreement, reading

TOL = 1e-9


def crowd(seed: int, *, items=120, raters=5, classes=4, per_item=3, accuracy=0.7, missing=0.0) -> np.ndarray:
    """(items, raters) ratings, -1 where missing: ``per_item`` raters per item, right with ``accuracy``."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, items)
    ratings = np.full((items, raters), -1)
    for i in range(items):
        for r in rng.choice(raters, per_item, replace=False):
            if rng.random() >= missing:
                ratings[i, r] = truth[i] if rng.random() < accuracy else rng.integers(0, classes)
    return ratings


def reference_alpha(ratings: np.ndarray) -> float:
    reliability = np.where(ratings >= 0, ratings, np.nan).T.astype(float)
    return krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal")


def reference_fleiss(ratings: np.ndarray, n_classes: int, raters: int) -> float:
    rows = [r[r >= 0] for r in ratings if (r >= 0).sum() == raters]
    table, _ = aggregate_raters(np.array(rows), n_cat=n_classes)
    return fleiss_kappa(table, method="fleiss")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("classes", "per_item", "missing"), [(2, 2, 0.0), (4, 3, 0.0), (6, 4, 0.15), (10, 3, 0.3)])
def test_random_crowds_match_statsmodels_krippendorff_and_scikit_learn(seed, classes, per_item, missing):
    ratings = crowd(seed, classes=classes, per_item=per_item, missing=missing)
    result = agreement(ratings, classes)
    overlapped = ratings[(ratings >= 0).sum(axis=1) >= 2]
    assert result.items == len(overlapped)
    assert result.krippendorff_alpha.value == pytest.approx(reference_alpha(ratings), abs=TOL)
    assert result.krippendorff_alpha.items == len(overlapped)

    counts = (overlapped >= 0).sum(axis=1)
    values, frequency = np.unique(counts, return_counts=True)
    modal = int(values[frequency == frequency.max()].max())
    assert result.fleiss_kappa.value == pytest.approx(reference_fleiss(ratings, classes, modal), abs=TOL)
    assert result.fleiss_kappa.items == int((counts == modal).sum())
    assert (result.fleiss_kappa.note is None) == (missing == 0.0)

    for k, per_class in enumerate(result.per_class):
        binary = np.where(ratings >= 0, (ratings == k).astype(int), -1)
        assert per_class.krippendorff_alpha.value == pytest.approx(reference_alpha(binary), abs=TOL)
        assert per_class.fleiss_kappa.value == pytest.approx(reference_fleiss(binary, 2, modal), abs=TOL)
        assert per_class.ratings == int((overlapped == k).sum())

    expected_pairs = {}
    for a, b in itertools.combinations(range(ratings.shape[1]), 2):
        both = (overlapped[:, a] >= 0) & (overlapped[:, b] >= 0)
        if both.sum() >= MIN_SHARED_ITEMS:
            expected_pairs[a, b] = (int(both.sum()), cohen_kappa_score(overlapped[both, a], overlapped[both, b]))
    assert {(p.first, p.second): p.shared for p in result.pairs} == {k: v[0] for k, v in expected_pairs.items()}
    for pair in result.pairs:
        assert pair.cohen_kappa.value == pytest.approx(expected_pairs[pair.first, pair.second][1], abs=TOL)

    pair_agreement = [np.mean([x == y for x, y in itertools.combinations(row[row >= 0], 2)]) for row in overlapped]
    assert result.percent_agreement.value == pytest.approx(np.mean(pair_agreement), abs=TOL)


def test_perfect_agreement_on_several_classes():
    ratings = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [1, 1, -1]] * 5)
    result = agreement(ratings, 3)
    assert result.fleiss_kappa.value == pytest.approx(1.0, abs=TOL)
    assert result.krippendorff_alpha.value == pytest.approx(reference_alpha(ratings), abs=TOL) == pytest.approx(1.0)
    assert result.percent_agreement.value == 1.0 and result.unanimous == 1.0
    assert result.fleiss_kappa.reading == "1.00: almost perfect"
    assert all(p.cohen_kappa.value == pytest.approx(1.0) for p in result.pairs)


def test_total_disagreement_is_below_chance():
    ratings = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]] * 6)
    result = agreement(ratings, 3)
    assert result.fleiss_kappa.value == pytest.approx(fleiss_kappa(aggregate_raters(ratings, n_cat=3)[0]), abs=TOL)
    assert result.fleiss_kappa.value == pytest.approx(-0.5)
    assert result.krippendorff_alpha.value == pytest.approx(reference_alpha(ratings), abs=TOL)
    assert result.krippendorff_alpha.value < 0
    assert result.fleiss_kappa.reading == "-0.50: poor (less than chance)"
    assert result.percent_agreement.value == 0.0 and result.unanimous == 0.0


def test_one_class_only_is_undefined_where_the_references_give_nan():
    ratings = np.array([[1, 1, 1], [1, 1, -1]] * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(fleiss_kappa(aggregate_raters(ratings[:, :2], n_cat=3)[0]))
        with pytest.raises(ValueError, match="more than one value"):
            reference_alpha(ratings)
        assert np.isnan(krippendorff.alpha(value_counts=np.array([[3, 0], [2, 0]]), level_of_measurement="nominal"))
        assert np.isnan(cohen_kappa_score(ratings[:, 0], ratings[:, 1]))
    result = agreement(ratings, 3)
    for figure in (result.fleiss_kappa, result.krippendorff_alpha, result.pairs[0].cohen_kappa):
        assert figure.value is None and figure.reason == ONE_CLASS and figure.items > 0
    assert result.percent_agreement.value == 1.0
    assert result.per_class[0].fleiss_kappa.reason == "no label of this class on overlapped images"
    assert result.per_class[1].fleiss_kappa.value is None  # every label is class 1: one-vs-rest is one class too


def test_no_overlap_gives_empty_figures_with_a_reason():
    ratings = np.array([[0, -1], [-1, 1], [2, -1]])
    result = agreement(ratings, 3)
    assert result.items == 0 and result.pairs == [] and result.per_class == [] and result.unanimous is None
    for figure in (result.fleiss_kappa, result.krippendorff_alpha, result.percent_agreement):
        assert figure.value is None and figure.items == 0 and "two annotators" in figure.reason


def test_pairs_with_few_shared_items_are_counted_but_left_out():
    ratings = crowd(1, items=40, raters=8, per_item=2)
    result = agreement(ratings, 4)
    assert all(p.shared >= MIN_SHARED_ITEMS for p in result.pairs)
    sharing = sum(
        1
        for a, b in itertools.combinations(range(8), 2)
        if 0 < ((ratings[:, a] >= 0) & (ratings[:, b] >= 0)).sum() < MIN_SHARED_ITEMS
    )
    assert result.pairs_below_minimum == sharing > 0


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.41, "0.41: moderate"), (0.2, "0.20: slight"), (0.204, "0.20: slight"), (0.6049, "0.60: moderate"),
     (0.81, "0.81: almost perfect"), (0.0, "0.00: slight"), (-0.01, "-0.01: poor (less than chance)")],
)  # fmt: skip
def test_readings_follow_landis_and_koch(value, text):
    assert reading(value) == text


def test_bad_ratings_are_refused():
    with pytest.raises(ValueError, match="class indices below 3"):
        agreement(np.array([[0, 3]]), 3)
