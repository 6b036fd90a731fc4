"""Box math: the Hungarian matcher against a brute-force reference, agreement against scikit-learn,
consensus and scorecards on hand-made images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from annotation.boxes import (
    Box,
    Weak,
    assign,
    box_scorecard,
    consensus_boxes,
    iou,
    iou_matrix,
    match,
    merge_boxes,
    pair_agreement,
)


def random_boxes(rng: np.random.Generator, count: int) -> list[Box]:
    """Boxes crowded on a small canvas, so many pairs overlap near the threshold."""
    return [
        Box(
            str(rng.integers(3)), *(float(v) for v in rng.uniform(0, 12, 2)), *(float(v) for v in rng.uniform(6, 14, 2))
        )
        for _ in range(count)
    ]


def brute_force(a: list[Box], b: list[Box], threshold: float) -> tuple[int, float]:
    """The most pairs at or above the threshold, then the largest total IoU, over every partial matching."""
    ious = iou_matrix(a, b)
    best = (0, 0.0)
    # Slots past len(b) stand for "left unmatched", so every partial one-to-one matching is some permutation.
    for slots in itertools.permutations(range(len(b) + len(a)), len(a)):
        pairs = [ious[i, j] for i, j in enumerate(slots) if j < len(b) and ious[i, j] >= threshold]
        best = max(best, (len(pairs), float(sum(pairs))))
    return best


def test_matching_finds_the_brute_force_optimum_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(150):
        a, b = random_boxes(rng, int(rng.integers(0, 5))), random_boxes(rng, int(rng.integers(0, 5)))
        threshold = float(rng.choice([0.1, 0.3, 0.5]))
        result = match(a, b, iou_threshold=threshold)
        count, total = brute_force(a, b, threshold)
        assert len(result.pairs) == count
        assert sum(value for _, _, value in result.pairs) == pytest.approx(total, abs=1e-9)
        assert all(value >= threshold and value == iou(a[i], b[j]) for i, j, value in result.pairs)
        assert sorted([i for i, _, _ in result.pairs] + result.unmatched_a) == list(range(len(a)))
        assert sorted([j for _, j, _ in result.pairs] + result.unmatched_b) == list(range(len(b)))


def test_iou_of_hand_made_boxes():
    square = Box("cat", 0, 0, 10, 10)
    assert iou(square, Box("dog", 5, 0, 10, 10)) == pytest.approx(50 / 150)  # labels play no part
    assert iou(square, Box("cat", 10, 0, 10, 10)) == 0.0  # touching edges share no area
    assert iou(square, Box("cat", 2.5, 2.5, 5, 5)) == pytest.approx(0.25)
    assert iou(square, square) == 1.0
    with pytest.raises(ValueError, match="positive width and height"):
        Box("cat", 0, 0, 0, 10)


def test_matching_edge_cases():
    box, other = Box("a", 0, 0, 10, 10), Box("a", 50, 50, 10, 10)
    assert match([], []).pairs == []
    empty_b = match([box, other], [])
    assert (empty_b.pairs, empty_b.unmatched_a, empty_b.unmatched_b) == ([], [0, 1], [])
    empty_a = match([], [box])
    assert (empty_a.pairs, empty_a.unmatched_a, empty_a.unmatched_b) == ([], [], [0])
    # The same box twice on one side: one pair (the first of the tied candidates), the copy left over.
    twice = match([box], [box, box])
    assert (twice.pairs, twice.unmatched_b) == ([(0, 0, 1.0)], [1])
    assert match([box], [box, box]) == twice
    # Twice on both sides: both copies pair up.
    assert [(i, j) for i, j, _ in match([box, box], [box, box]).pairs] == [(0, 0), (1, 1)]
    # Nothing at the threshold: no pair, however close.
    assert match([box], [Box("a", 5, 0, 10, 10)], iou_threshold=0.5).unmatched_b == [0]


def test_matching_prefers_more_pairs_to_a_larger_total_iou():
    # Two close fits (0.99 + 0.99) against three looser pairs (0.5 each): every box paired wins, as
    # each unpaired box would count as a disagreement.
    scores = np.array([[0.99, 0.5, 0.0], [0.0, 0.99, 0.5], [0.5, 0.0, 0.0]])
    assert assign(scores, 0.5) == [(0, 1, 0.5), (1, 2, 0.5), (2, 0, 0.5)]
    assert assign(scores, 0.6) == [(0, 0, 0.99), (1, 1, 0.99)]


def shifted(box: Box, dx: float, label: str | None = None) -> Box:
    return Box(label or box.label, box.x + dx, box.y, box.w, box.h)


def test_pair_agreement_counts_and_kappa_match_scikit_learn():
    rng = np.random.default_rng(1)
    first, second, expected_first, expected_second = [], [], [], []
    for image in range(30):
        objects = [Box(str(rng.integers(3)), 30.0 * k, 0, 20, 20) for k in range(int(rng.integers(0, 4)))]
        theirs = []
        for box in objects:
            if rng.random() < 0.2:
                continue  # missed by the second annotator
            label = box.label if rng.random() < 0.8 else str(rng.integers(3))
            theirs.append(shifted(box, 1.0, label))  # IoU 19/21 with the first's box
            expected_first.append(box.label)
            expected_second.append(label)
        if image % 5 == 0:
            theirs.append(Box("0", 200, 200, 10, 10))  # a box of their own
        first.append(objects)
        second.append(theirs)
    result = pair_agreement(first, second)
    overall = result.overall
    assert result.images == 30
    assert overall.matched == len(expected_first)
    assert overall.first_boxes == sum(map(len, first)) and overall.second_boxes == sum(map(len, second))
    assert overall.recall == overall.matched / overall.first_boxes
    assert overall.precision == overall.matched / overall.second_boxes
    assert overall.f1 == pytest.approx(2 * overall.matched / (overall.first_boxes + overall.second_boxes))
    assert overall.mean_iou == pytest.approx(19 * 20 / (21 * 20))
    assert overall.cohen_kappa.value == pytest.approx(cohen_kappa_score(expected_first, expected_second))
    assert overall.cohen_kappa.items == overall.matched
    for entry in result.per_class:
        mine = [x == entry.label for x in expected_first]
        theirs_ = [y == entry.label for y in expected_second]
        assert entry.figures.matched == sum(x and y for x, y in zip(mine, theirs_, strict=True))
        assert entry.figures.cohen_kappa.value == pytest.approx(cohen_kappa_score(mine, theirs_))


def test_pair_agreement_without_boxes_says_why_there_is_no_figure():
    result = pair_agreement([[], []], [[], []])
    assert result.images == 2 and result.per_class == []
    assert result.overall.f1 is None and result.overall.cohen_kappa.value is None
    assert "no box" in result.overall.cohen_kappa.reason
    one_class = pair_agreement([[Box("a", 0, 0, 10, 10)]], [[Box("a", 0, 0, 10, 10)]])
    assert one_class.overall.f1 == 1.0 and "same class" in one_class.overall.cohen_kappa.reason
    with pytest.raises(ValueError, match="same images"):
        pair_agreement([[]], [])


OBJECT = Box("cat", 10, 10, 20, 20)


def test_consensus_keeps_boxes_drawn_by_a_quorum_with_median_outlines():
    drawn = {
        "a": [OBJECT, Box("dog", 60, 60, 10, 10)],
        "b": [shifted(OBJECT, 1.0)],
        "c": [Box("cat", 8, 8, 26, 26)],  # loose: the median of three outlines ignores it
    }
    result = consensus_boxes(drawn)
    assert [c.box for c in result.boxes] == [Box("cat", 10, 10, 21, 20)]  # x2: median of 30, 31, 34
    assert result.boxes[0].annotators == ["a", "b", "c"] and result.dropped == 1
    assert result.weak == []  # three of three is firm; the dog, drawn once, is simply dropped
    assert consensus_boxes(drawn, quorum=1).boxes[1].box == Box("dog", 60, 60, 10, 10)
    with pytest.raises(ValueError, match="quorum must be between 1 and the 3 annotators"):
        consensus_boxes(drawn, quorum=4)
    assert consensus_boxes({}) == consensus_boxes({"a": [], "b": []})


def test_consensus_takes_at_most_one_box_per_annotator_per_cluster():
    # "a" drew the same box twice: it is not two votes for one object.
    result = consensus_boxes({"a": [OBJECT, OBJECT], "b": [], "c": []})
    assert result.boxes == [] and result.dropped == 2
    result = consensus_boxes({"a": [OBJECT, OBJECT], "b": [OBJECT], "c": []})
    assert len(result.boxes) == 1 and result.boxes[0].annotators == ["a", "b"]
    assert result.weak == [Weak.at_quorum]


def test_weak_consensus_reasons():
    tie = consensus_boxes({"a": [OBJECT], "b": [shifted(OBJECT, 0, "dog")]}, label_order=["dog", "cat"])
    assert tie.boxes[0].box.label == "dog" and tie.boxes[0].tie and tie.weak == [Weak.class_tie]
    weighted = consensus_boxes({"a": [OBJECT], "b": [shifted(OBJECT, 0, "dog")]}, weights={"a": 2.0, "b": 1.0})
    assert weighted.boxes[0].box.label == "cat" and weighted.weak == []
    low = consensus_boxes({"a": [OBJECT], "b": [shifted(OBJECT, 6.0)]})  # IoU 14/26
    assert low.weak == [Weak.low_iou]
    half = consensus_boxes({"a": [OBJECT], "b": [OBJECT, Box("cat", 60, 60, 10, 10)]})
    assert len(half.boxes) == 1 and half.weak == [Weak.half_drawn]


LEFT, RIGHT = Box("cat", 10, 10, 20, 20), Box("dog", 30, 12, 20, 20)  # touching objects
AROUND = Box("cat", 10, 10, 40, 22)  # one box around both


def test_a_merge_box_votes_for_the_objects_inside_it_but_does_not_shape_them():
    result = consensus_boxes({"a": [LEFT, RIGHT], "b": [LEFT], "c": [AROUND]})
    assert [c.box for c in result.boxes] == [LEFT, RIGHT]
    assert result.boxes[1].annotators == ["a"] and result.boxes[1].merged_by == ["c"]
    assert Weak.at_quorum in result.weak
    # A stray box drawn over one of the objects is not a third object inside the merge box.
    stray = Box("dog", 34, 16, 14, 14)
    result = consensus_boxes({"a": [LEFT, RIGHT], "b": [LEFT, RIGHT, stray], "c": [AROUND]})
    assert [c.box for c in result.boxes] == [LEFT, RIGHT] and result.dropped == 1
    assert [c.merged_by for c in result.boxes] == [["c"], ["c"]]
    # RIGHT is kept only thanks to the merge box's vote: one person split, one merged, nobody can tell.
    assert Weak.merge_vote in consensus_boxes({"a": [LEFT, RIGHT], "c": [AROUND]}).weak


def test_a_box_two_annotators_drew_is_no_merge():
    # One splits what the two others outline as one object: the majority's box stands.
    nearly = Box("cat", 10.5, 10, 40, 22)
    result = consensus_boxes({"a": [LEFT, RIGHT], "b": [AROUND], "c": [nearly]})
    assert len(result.boxes) == 1 and result.boxes[0].merged_by == []
    assert result.boxes[0].box == Box("cat", 10.25, 10, 40, 22) and result.boxes[0].annotators == ["b", "c"]
    assert (result.weak, result.dropped) == ([Weak.at_quorum], 2)  # the split halves: one annotator's each


def test_scorecard_counts_each_kind_of_mistake():
    far = Box("bird", 80, 80, 10, 10)
    reference = [[LEFT, RIGHT, far], [OBJECT], [OBJECT], [OBJECT]]
    theirs = [
        [AROUND, shifted(far, 0.5)],  # a merge over the touching pair; the bird, tight
        [Box("cat", 6, 6, 28, 28)],  # loose: IoU 400/784
        [shifted(OBJECT, 0, "dog"), Box("cat", 60, 60, 5, 5)],  # another class, and a box of nothing
        [],  # a missed object
    ]
    card = box_scorecard(theirs, reference)
    assert (card.images, card.objects, card.boxes, card.matched) == (4, 6, 5, 3)
    assert (card.merges, card.merged_objects, card.missed, card.extra) == (1, 2, 1, 1)
    assert (card.loose, card.confused, card.confusions) == (1, 1, {("cat", "dog"): 1})
    assert card.flags == []  # four images are too few to flag anyone


def test_a_box_around_an_object_holding_a_smaller_one_is_not_a_merge():
    person, bag = Box("person", 0, 0, 40, 80), Box("bag", 25, 40, 10, 10)
    assert merge_boxes([Box("person", 1, 0, 40, 81)], [person, bag]) == {}
    assert merge_boxes([AROUND], [LEFT, RIGHT]) == {0: [0, 1]}


@pytest.mark.parametrize(
    ("theirs", "flag"),
    [
        ([AROUND], "merges"),
        ([LEFT], "missed_objects"),
        ([LEFT, RIGHT, Box("cat", 70, 70, 10, 10)], "extra_boxes"),
        ([Box("cat", 7, 7, 26, 26), RIGHT], "loose_boxes"),
        ([shifted(LEFT, 0, "dog"), RIGHT], "class_confusion"),
    ],
)
def test_a_habit_is_flagged_once_twenty_images_show_it(theirs, flag):
    assert box_scorecard([theirs] * 19, [[LEFT, RIGHT]] * 19).flags == []
    flags = box_scorecard([theirs] * 20, [[LEFT, RIGHT]] * 20).flags
    assert [f.flag for f in flags] == [flag]
    assert "on 20 images" in flags[0].evidence
    assert box_scorecard([[LEFT, RIGHT]] * 20, [[LEFT, RIGHT]] * 20).flags == []
