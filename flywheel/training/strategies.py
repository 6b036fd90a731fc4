"""Active-learning query strategies: which unlabeled images people should label next.

A strategy ranks a pool of images the model has scored and returns positions in it, the image to
label first first. Each one gives every image a score, so the mining job can keep a shortlist while
it streams through a pool of any size (``shortlist``); the diversity-aware strategy then spreads its
batch over the shortlist's embeddings. The shape follows small-text's query strategies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


class EmptyPool(ValueError):
    """There is no unlabeled image to rank."""


@dataclass(frozen=True)
class Pool:
    """N scored unlabeled images. ``ids`` are the caller's names for them (image ids in the service)."""

    ids: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) the top probability: low means unsure
    margin: np.ndarray  # (N,) the top probability minus the second: low means unsure
    entropy: np.ndarray  # (N,) of the probabilities, in nats: high means unsure
    embeddings: np.ndarray | None = None  # (N, D), read only by strategies that need them
    # (N,) 0..1, how much the champion and its fresh update differ on each image (detection): high means unsure
    disagreement: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: np.ndarray) -> Pool:
        return Pool(
            ids=self.ids[positions],
            confidence=self.confidence[positions],
            margin=self.margin[positions],
            entropy=self.entropy[positions],
            embeddings=None if self.embeddings is None else self.embeddings[positions],
            disagreement=None if self.disagreement is None else self.disagreement[positions],
        )

    @classmethod
    def from_probabilities(
        cls, probabilities: np.ndarray, *, ids: np.ndarray | None = None, embeddings: np.ndarray | None = None
    ) -> Pool:
        """A pool from (N, K) probabilities; ids default to 0..N-1."""
        confidence, margin, entropy = summarize(probabilities)
        ids = np.arange(len(probabilities)) if ids is None else np.asarray(ids)
        return cls(ids=ids, confidence=confidence, margin=margin, entropy=entropy, embeddings=embeddings)

    @classmethod
    def concat(cls, pools: list[Pool]) -> Pool:
        with_embeddings = [p.embeddings for p in pools if p.embeddings is not None]
        with_disagreement = [p.disagreement for p in pools if p.disagreement is not None]
        return cls(
            ids=np.concatenate([p.ids for p in pools]),
            confidence=np.concatenate([p.confidence for p in pools]),
            margin=np.concatenate([p.margin for p in pools]),
            entropy=np.concatenate([p.entropy for p in pools]),
            embeddings=np.concatenate(with_embeddings) if len(with_embeddings) == len(pools) else None,
            disagreement=np.concatenate(with_disagreement) if len(with_disagreement) == len(pools) else None,
        )


def summarize(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) top probability, top-two margin and entropy (nats) of (N, K) probabilities, K >= 2."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top_two = -np.partition(-probabilities, 1, axis=1)[:, :2]
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-12, 1.0))).sum(axis=1)
    return top_two[:, 0], top_two[:, 0] - top_two[:, 1], entropy


def best(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` highest scores, highest first; of equal scores the earlier position wins."""
    return np.argsort(-scores, kind="stable")[:n]


class QueryStrategy(ABC):
    """Ranks a pool: ``query`` returns positions of up to ``n`` distinct images, the most wanted first."""

    name: ClassVar[str]
    needs_embeddings: ClassVar[bool] = False
    needs_disagreement: ClassVar[bool] = False  # without it (no fresh update yet), ranks as if all agreed

    def shortlist_size(self, n: int) -> int:
        """How many of the best-scored images ``select`` needs to choose ``n`` from."""
        return n

    @abstractmethod
    def scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        """(N,) how much each image's label is wanted: higher first."""

    def select(self, pool: Pool, n: int, rng: np.random.Generator) -> np.ndarray:
        return best(self.scores(pool, rng), n)

    def query(self, pool: Pool, n: int, *, seed: int = 0) -> np.ndarray:
        """Positions in ``pool`` of ``min(n, len(pool))`` distinct images; the same seed gives the same answer."""
        if len(pool) == 0:
            raise EmptyPool(f"{self.name}: no unlabeled image to rank; upload images, or score them first")
        if n < 1:
            raise ValueError(f"{self.name}: a batch needs at least one image, asked for {n}")
        if self.needs_embeddings and pool.embeddings is None:
            raise ValueError(f"{self.name} needs the pool's embeddings")
        return self.select(pool, min(n, len(pool)), np.random.default_rng(seed))


class RandomSampling(QueryStrategy):
    """Every image equally likely: the baseline the others must beat."""

    name = "random"

    def scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        return rng.random(len(pool))


class LeastConfidence(QueryStrategy):
    """The lowest top probability first."""

    name = "least_confidence"

    def scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        return -pool.confidence


class Margin(QueryStrategy):
    """The smallest gap between the two likeliest labels first."""

    name = "margin"

    def scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        return -pool.margin


class Entropy(QueryStrategy):
    """The most spread-out probabilities first."""

    name = "entropy"

    def scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        return pool.entropy


class MarginKCenter(Margin):
    """The ``candidates_per_pick`` x n images with the smallest margin, then a batch of n spread over them by
    k-center greedy on the embeddings, so near-identical images are not asked about in the same batch."""

    name = "margin_kcenter"
    needs_embeddings = True
    candidates_per_pick: ClassVar[int] = 3

    def shortlist_size(self, n: int) -> int:
        return n * self.candidates_per_pick

    def select(self, pool: Pool, n: int, rng: np.random.Generator) -> np.ndarray:
        assert pool.embeddings is not None
        candidates = best(self.scores(pool, rng), self.shortlist_size(n))
        return candidates[k_center_greedy(pool.embeddings[candidates], n)]


class Disagreement(QueryStrategy):
    """Where the champion and its fresh update disagree most first (a committee of two: what the newest labels
    changed in the model's mind is what it is least settled about); among images they agree on, the smallest
    margin first."""

    name = "disagreement"
    needs_disagreement = True
    tie_break: ClassVar[float] = 1e-3  # the margin's weight: it orders only images of (almost) equal disagreement

    def scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        disagreement = pool.disagreement if pool.disagreement is not None else np.zeros(len(pool))
        # 1 - margin is in [0, 2] for a classifier, but up to twice the summed doubts of its boxes for a detector
        # (flywheel.training.box_mining): bounded below 1 in the same order, so it stays a tie-break.
        doubt = 1 - pool.margin
        return disagreement + self.tie_break * doubt / (1 + doubt)


class DisagreementKCenter(MarginKCenter):
    """The ``candidates_per_pick`` x n images the two models disagree on most, then a batch spread over them by
    k-center greedy on the embeddings, as ``margin_kcenter`` does with the margin."""

    name = "disagreement_kcenter"
    needs_disagreement = True

    def scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        return Disagreement().scores(pool, rng)


def k_center_greedy(points: np.ndarray, n: int) -> np.ndarray:
    """Positions of ``n`` of the (M, D) ``points``: the first, then each time the point farthest from all
    chosen so far. Memory is O(M) beyond the points."""
    points = np.asarray(points, dtype=np.float32)
    chosen = [0]
    distance = np.linalg.norm(points - points[0], axis=1)
    distance[0] = -1.0  # chosen points are never chosen again, even among identical ones
    for _ in range(1, n):
        pick = int(distance.argmax())
        chosen.append(pick)
        distance = np.minimum(distance, np.linalg.norm(points - points[pick], axis=1))
        distance[chosen] = -1.0
    return np.array(chosen)


STRATEGIES: dict[str, type[QueryStrategy]] = {
    cls.name: cls
    for cls in (RandomSampling, LeastConfidence, Margin, Entropy, MarginKCenter, Disagreement, DisagreementKCenter)
}


def get_strategy(name: str) -> QueryStrategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}") from None


def shortlist(strategy: QueryStrategy, chunks: Iterable[Pool], n: int, *, seed: int = 0) -> Pool:
    """The ``strategy.shortlist_size(n)`` best-scored images of a pool read in chunks, in pool order.

    Memory is bounded by the shortlist, however large the pool; ``strategy.query`` on the shortlist then
    chooses what it would have chosen from the whole pool.
    """
    size = strategy.shortlist_size(n)
    rng = np.random.default_rng(seed)
    kept: Pool | None = None
    kept_scores = np.zeros(0)
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        pool = chunk if kept is None else Pool.concat([kept, chunk])
        scores = np.concatenate([kept_scores, strategy.scores(chunk, rng)])
        if len(pool) > size:
            keep = np.sort(np.argpartition(-scores, size - 1)[:size])
            pool, scores = pool.take(keep), scores[keep]
        kept, kept_scores = pool, scores
    if kept is None:
        return Pool(ids=np.zeros(0, np.int64), confidence=np.zeros(0), margin=np.zeros(0), entropy=np.zeros(0))
    return kept
