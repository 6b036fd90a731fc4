"""Majority vote: the current label of an image while Dawid-Skene is not yet in place."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Vote:
    label: str | None
    tie: bool
    votes: int


def majority_vote(labels: Sequence[str], label_order: Sequence[str]) -> Vote:
    """The most frequent label; a tie goes to the label listed first in the project's label set.

    Ties are resolved deterministically (the same votes always give the same answer) and flagged,
    so they can be sent for review.
    """
    if not labels:
        return Vote(label=None, tie=False, votes=0)
    counts = Counter(labels)
    best = max(counts.values())
    tied = [label for label, n in counts.items() if n == best]
    rank = {label: i for i, label in enumerate(label_order)}
    winner = min(tied, key=lambda label: (rank.get(label, len(rank)), label))
    return Vote(label=winner, tie=len(tied) > 1, votes=best)
