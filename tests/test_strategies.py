"""Every query strategy passes one shared suite; each adds what is particular to it."""

from __future__ import annotations

from dataclasses import replace
from typing import get_args

import numpy as np
import pytest

from flywheel.training.strategies import (
    STRATEGIES,
    Disagreement,
    DisagreementKCenter,
    EmptyPool,
    Entropy,
    LeastConfidence,
    Margin,
    MarginKCenter,
    Pool,
    QueryStrategy,
    RandomSampling,
    get_strategy,
    shortlist,
)
from storage.projects import MiningStrategy


def seeded_pool(size: int = 200, classes: int = 5, dims: int = 8, seed: int = 0) -> Pool:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(classes, 0.5), size=size)
    embeddings = rng.normal(size=(size, dims)).astype(np.float32)
    pool = Pool.from_probabilities(probabilities, ids=np.arange(1000, 1000 + size), embeddings=embeddings)
    return replace(pool, disagreement=rng.random(size) * (rng.random(size) < 0.5))  # half of them agree


def chunks(pool: Pool, size: int) -> list[Pool]:
    return [pool.take(np.arange(start, min(start + size, len(pool)))) for start in range(0, len(pool), size)]


class StrategyChecks:
    """The shared suite: each subclass names its strategy."""

    strategy: QueryStrategy

    def test_ranks_the_whole_pool_when_asked_for_all_of_it(self):
        pool = seeded_pool(60)
        order = self.strategy.query(pool, len(pool))
        assert sorted(order.tolist()) == list(range(len(pool)))

    def test_a_batch_has_n_distinct_positions_in_the_pool(self):
        pool = seeded_pool()
        batch = self.strategy.query(pool, 25)
        assert len(batch) == 25 == len(set(batch.tolist()))
        assert batch.min() >= 0 and batch.max() < len(pool)

    def test_asking_for_more_than_the_pool_gives_the_whole_pool(self):
        pool = seeded_pool(7)
        assert sorted(self.strategy.query(pool, 50).tolist()) == list(range(7))

    def test_no_duplicates_even_among_identical_images(self):
        pool = Pool.from_probabilities(np.full((30, 3), 1 / 3), embeddings=np.ones((30, 4), np.float32))
        batch = self.strategy.query(pool, 30)
        assert len(set(batch.tolist())) == 30

    def test_deterministic_with_a_seed(self):
        pool = seeded_pool()
        first = self.strategy.query(pool, 20, seed=7)
        again = type(self.strategy)().query(pool, 20, seed=7)
        assert first.tolist() == again.tolist()

    def test_an_empty_pool_is_a_clear_error(self):
        empty = seeded_pool(5).take(np.arange(0))
        with pytest.raises(EmptyPool, match="no unlabeled image to rank"):
            self.strategy.query(empty, 10)

    def test_a_batch_of_nothing_is_refused(self):
        with pytest.raises(ValueError, match="at least one image"):
            self.strategy.query(seeded_pool(), 0)

    def test_a_pool_read_in_chunks_gives_the_same_batch_as_the_whole_pool(self):
        """How the mining job reads a large pool: keeping a shortlist, then choosing from it."""
        pool = seeded_pool(500)
        whole = pool.ids[self.strategy.query(pool, 20, seed=3)]
        kept = shortlist(self.strategy, chunks(pool, 64), 20, seed=3)
        assert len(kept) == self.strategy.shortlist_size(20)
        streamed = kept.ids[self.strategy.query(kept, 20, seed=3)]
        if isinstance(self.strategy, RandomSampling):  # another uniform sample: same size, no repeats
            assert len(set(streamed.tolist())) == 20
        else:
            assert streamed.tolist() == whole.tolist()


class TestRandom(StrategyChecks):
    strategy = RandomSampling()

    def test_other_seeds_give_other_batches_drawn_uniformly(self):
        pool = seeded_pool(100)
        counts = np.zeros(100)
        for seed in range(400):
            counts[self.strategy.query(pool, 10, seed=seed)] += 1
        assert self.strategy.query(pool, 10, seed=1).tolist() != self.strategy.query(pool, 10, seed=2).tolist()
        assert counts.min() > 15 and counts.max() < 70  # 40 expected per image


class TestLeastConfidence(StrategyChecks):
    strategy = LeastConfidence()

    def test_lowest_top_probability_first(self):
        pool = seeded_pool()
        order = self.strategy.query(pool, len(pool))
        assert np.all(np.diff(pool.confidence[order]) >= 0)


class TestMargin(StrategyChecks):
    strategy = Margin()

    def test_smallest_gap_between_the_two_likeliest_labels_first(self):
        probabilities = np.array([[0.9, 0.05, 0.05], [0.45, 0.44, 0.11], [0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
        assert self.strategy.query(Pool.from_probabilities(probabilities), 4).tolist() == [3, 1, 2, 0]


class TestEntropy(StrategyChecks):
    strategy = Entropy()

    def test_most_spread_out_probabilities_first(self):
        probabilities = np.array([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
        assert self.strategy.query(Pool.from_probabilities(probabilities), 3).tolist() == [1, 2, 0]


class TestMarginKCenter(StrategyChecks):
    strategy = MarginKCenter()

    def test_picks_spread_out_points_where_margin_alone_picks_near_duplicates(self):
        # Three tight clusters of three near-identical unsure images each, the first a little more unsure,
        # and confident images elsewhere.
        rng = np.random.default_rng(0)
        centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
        unsure = np.concatenate([c + rng.normal(scale=0.01, size=(3, 2)) for c in centres])
        sure = rng.normal(loc=5, scale=3, size=(40, 2))
        margin = np.concatenate([np.full(3, 0.01), np.full(3, 0.02), np.full(3, 0.03), np.full(40, 0.9)])
        pool = Pool(
            ids=np.arange(49),
            confidence=0.5 + margin / 2,
            margin=margin + rng.uniform(0, 1e-4, 49),
            entropy=1 - margin,
            embeddings=np.concatenate([unsure, sure]).astype(np.float32),
        )
        clusters = lambda batch: sorted(int(i) // 3 for i in batch)  # noqa: E731
        assert clusters(Margin().query(pool, 3)) == [0, 0, 0]
        assert clusters(self.strategy.query(pool, 3)) == [0, 1, 2]

    def test_the_first_choice_is_the_most_uncertain_image(self):
        pool = seeded_pool()
        assert self.strategy.query(pool, 10)[0] == Margin().query(pool, 1)[0]

    def test_refuses_a_pool_without_embeddings(self):
        pool = seeded_pool()
        bare = Pool(ids=pool.ids, confidence=pool.confidence, margin=pool.margin, entropy=pool.entropy)
        with pytest.raises(ValueError, match="needs the pool's embeddings"):
            self.strategy.query(bare, 5)


class TestDisagreement(StrategyChecks):
    strategy = Disagreement()

    def test_where_the_two_models_disagree_most_first_then_the_smallest_margin(self):
        pool = seeded_pool()
        assert pool.disagreement is not None
        order = self.strategy.query(pool, len(pool))
        disagree = pool.disagreement[order]
        assert np.all(np.diff(disagree) <= self.strategy.tie_break)  # the margin orders only near-equals
        agreed = order[disagree == 0]  # the images both models answer alike: by margin, as Margin ranks them
        assert agreed.tolist() == agreed[Margin().query(pool.take(agreed), len(agreed))].tolist()

    def test_a_detectors_margin_far_below_minus_one_still_only_breaks_ties(self):
        # Box mining's margin is 1 - 2 x an image's summed box doubts: 60 coin-toss boxes give -59.
        pool = replace(seeded_pool(), margin=1 - 2 * np.arange(len(seeded_pool())) * 0.5)
        assert pool.disagreement is not None
        order = self.strategy.query(pool, len(pool))
        assert np.all(np.diff(pool.disagreement[order]) <= self.strategy.tie_break)
        agreed = order[pool.disagreement[order] == 0]
        assert agreed.tolist() == agreed[Margin().query(pool.take(agreed), len(agreed))].tolist()

    def test_without_a_second_model_it_ranks_by_margin(self):
        pool = replace(seeded_pool(), disagreement=None)
        assert self.strategy.query(pool, 20).tolist() == Margin().query(pool, 20).tolist()


class TestDisagreementKCenter(StrategyChecks):
    strategy = DisagreementKCenter()

    def test_the_first_choice_is_where_the_two_models_disagree_most(self):
        pool = seeded_pool()
        assert pool.disagreement is not None
        assert self.strategy.query(pool, 10)[0] == int(np.argmax(pool.disagreement))


def test_every_strategy_is_in_the_suite_and_selectable_by_the_projects_setting():
    tested = {cls.strategy.name for cls in StrategyChecks.__subclasses__()}
    assert tested == set(STRATEGIES) == set(get_args(MiningStrategy))
    with pytest.raises(ValueError, match="use one of random, least_confidence, margin, entropy, margin_kcenter"):
        get_strategy("coreset")
