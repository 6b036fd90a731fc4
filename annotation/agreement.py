"""Inter-annotator agreement on overlapped items: Fleiss' kappa, Krippendorff's alpha, Cohen's kappa.

The figures come from the reference implementations (statsmodels, the ``krippendorff`` package,
scikit-learn); this module only builds their inputs from a ratings matrix, says how many items each
figure rests on, and refuses to print a number where the statistic is undefined (a single class:
chance agreement is 1 and every kappa is 0/0).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

MIN_SHARED_ITEMS = 10  # below this, a pair's kappa is mostly noise
NO_OVERLAP = "no image has labels from two annotators yet; raise overlap_rate or add gold questions"
ONE_CLASS = "every label here is the same class: chance agreement is 1, so the figure is undefined"

# Landis & Koch (1977): the usual plain-language reading of kappa-like figures.
_BANDS = ((0.20, "slight"), (0.40, "fair"), (0.60, "moderate"), (0.80, "substantial"), (1.00, "almost perfect"))


def reading(value: float) -> str:
    """'0.41: moderate'. The band is taken from the rounded value, so the text never contradicts the number."""
    shown = round(value, 2)
    band = "poor (less than chance)" if shown < 0 else next(name for top, name in _BANDS if shown <= top)
    return f"{shown:.2f}: {band}"


@dataclass(frozen=True)
class Figure:
    value: float | None
    items: int  # how many items the figure rests on
    reading: str | None = None
    reason: str | None = None  # why there is no value
    note: str | None = None  # which items were used, when not all of them


def _value(value: float, items: int, note: str | None = None) -> Figure:
    return Figure(float(value), items, reading(float(value)), None, note)


def _none(reason: str, items: int = 0) -> Figure:
    return Figure(None, items, None, reason)


@dataclass(frozen=True)
class ClassAgreement:
    label: int  # class index
    ratings: int  # labels of this class on overlapped items
    fleiss_kappa: Figure
    krippendorff_alpha: Figure


@dataclass(frozen=True)
class PairAgreement:
    first: int  # column indices into the ratings matrix
    second: int
    shared: int
    percent_agreement: float
    cohen_kappa: Figure


@dataclass(frozen=True)
class Agreement:
    items: int  # overlapped items: at least two labels
    percent_agreement: Figure
    unanimous: float | None  # share of overlapped items where every label agrees
    fleiss_kappa: Figure
    krippendorff_alpha: Figure
    per_class: list[ClassAgreement]
    pairs: list[PairAgreement]
    pairs_below_minimum: int  # pairs sharing fewer than MIN_SHARED_ITEMS items, left out


def counts_table(ratings: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, K) how many annotators gave each class to each item; ``ratings`` is (N, W) with -1 for none."""
    table = np.zeros((ratings.shape[0], n_classes), dtype=np.int64)
    rows, cols = np.nonzero(ratings >= 0)
    np.add.at(table, (rows, ratings[rows, cols]), 1)
    return table


def fleiss(table: np.ndarray) -> Figure:
    """Fleiss' kappa on items with at least two labels. Fleiss assumes every item has the same number of
    labels, so it uses the most common count (the larger one on a tie) and says so."""
    raters = table.sum(axis=1)
    table = table[raters >= 2]
    if not len(table):
        return _none(NO_OVERLAP)
    counts, frequency = np.unique(raters[raters >= 2], return_counts=True)
    chosen = int(counts[frequency == frequency.max()].max())
    used = table[table.sum(axis=1) == chosen]
    margins = used.sum(axis=0) / used.sum()
    if np.isclose((margins**2).sum(), 1.0):
        return _none(ONE_CLASS, len(used))
    note = None if len(used) == len(table) else f"the {len(used)} items with exactly {chosen} labels"
    from statsmodels.stats.inter_rater import fleiss_kappa  # imported here: seconds that the API's start need not pay

    return _value(fleiss_kappa(used, method="fleiss"), len(used), note)


def alpha(table: np.ndarray) -> Figure:
    """Krippendorff's alpha (nominal) on every item with at least two labels, whatever their number."""
    pairable = table[table.sum(axis=1) >= 2]
    if not len(pairable):
        return _none(NO_OVERLAP)
    if np.count_nonzero(pairable.sum(axis=0)) < 2:
        return _none(ONE_CLASS, len(pairable))
    import krippendorff  # imported here: seconds that the API's start need not pay

    return _value(krippendorff.alpha(value_counts=pairable, level_of_measurement="nominal"), len(pairable))


def percent_agreement(table: np.ndarray) -> Figure:
    """Share of pairs of labels on the same item that agree, averaged over items (Fleiss' P-bar)."""
    raters = table.sum(axis=1)
    table, raters = table[raters >= 2], raters[raters >= 2]
    if not len(table):
        return _none(NO_OVERLAP)
    per_item = (table * (table - 1)).sum(axis=1) / (raters * (raters - 1))
    value = float(per_item.mean())
    return Figure(value, len(table), f"{value:.0%} of pairs of labels on the same image agree")


def one_vs_rest(table: np.ndarray, k: int) -> np.ndarray:
    """(N, 2): labels of class k, and all other labels, per item."""
    return np.stack([table[:, k], table.sum(axis=1) - table[:, k]], axis=1)


def cohen_pairs(ratings: np.ndarray, *, min_shared: int = MIN_SHARED_ITEMS) -> tuple[list[PairAgreement], int]:
    """Cohen's kappa for every pair of annotators (columns) sharing at least ``min_shared`` items;
    also returns how many pairs shared fewer and were left out."""
    from sklearn.metrics import cohen_kappa_score  # imported here: seconds that the API's start need not pay

    pairs, below = [], 0
    for a, b in itertools.combinations(range(ratings.shape[1]), 2):
        both = (ratings[:, a] >= 0) & (ratings[:, b] >= 0)
        shared = int(both.sum())
        if shared == 0:
            continue
        if shared < min_shared:
            below += 1
            continue
        first, second = ratings[both, a], ratings[both, b]
        agree = float((first == second).mean())
        if len(np.union1d(first, second)) == 1:
            kappa = _none(ONE_CLASS, shared)
        else:
            kappa = _value(cohen_kappa_score(first, second), shared)
        pairs.append(PairAgreement(a, b, shared, agree, kappa))
    return pairs, below


def agreement(ratings: np.ndarray, n_classes: int) -> Agreement:
    """Every figure for a (N, W) ratings matrix: class indices, -1 where an annotator did not label an item."""
    if ratings.ndim != 2 or ratings.max(initial=-1) >= n_classes or ratings.min(initial=-1) < -1:
        raise ValueError(f"ratings must be a 2-D array of class indices below {n_classes}, or -1")
    table = counts_table(ratings, n_classes)
    overlapped = table.sum(axis=1) >= 2
    table = table[overlapped]
    per_class = []
    if len(table):
        for k in range(n_classes):
            used = int(table[:, k].sum())
            if used == 0:
                absent = _none("no label of this class on overlapped images", len(table))
                per_class.append(ClassAgreement(k, 0, absent, absent))
                continue
            binary = one_vs_rest(table, k)
            per_class.append(ClassAgreement(k, used, fleiss(binary), alpha(binary)))
    pairs, below = cohen_pairs(ratings[overlapped])
    unanimous = float((table.max(axis=1) == table.sum(axis=1)).mean()) if len(table) else None
    return Agreement(
        items=len(table),
        percent_agreement=percent_agreement(table),
        unanimous=unanimous,
        fleiss_kappa=fleiss(table),
        krippendorff_alpha=alpha(table),
        per_class=per_class,
        pairs=pairs,
        pairs_below_minimum=below,
    )


def without_figures(reason: str) -> Agreement:
    """An agreement with every figure empty for the same reason (fewer than two annotators, say)."""
    empty = _none(reason)
    return Agreement(0, empty, None, empty, empty, [], [], 0)
