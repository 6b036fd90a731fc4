"""The training core on scikit-learn's digits: architectures, determinism, evaluation and promotion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binomtest
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score
from torch.optim.optimizer import register_optimizer_step_post_hook

from flywheel.serving.preprocess import to_array
from flywheel.training.architectures import build_model, default_architecture
from flywheel.training.datasets import dev_split
from flywheel.training.evaluation import decide_promotion, evaluate
from flywheel.training.fit import TrainConfig, epoch_order, predict_proba, train

LABELS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = np.stack([to_array(Image.fromarray((x * 16).clip(0, 255).astype(np.uint8)), 16) for x in data.images])
    order = np.random.default_rng(0).permutation(len(data.target))
    test, dev, train_ = order[:300], order[300:450], order[450:1250]
    return {name: (images[idx], data.target[idx]) for name, idx in (("train", train_), ("dev", dev), ("test", test))}


def fit(digits, **overrides):
    config = TrainConfig(**{"epochs": 4, **overrides})
    return train(
        config,
        train_images=digits["train"][0],
        train_labels=digits["train"][1],
        dev_images=digits["dev"][0],
        dev_labels=digits["dev"][1],
        num_classes=10,
    )


@pytest.mark.slow
def test_the_small_cnn_learns_the_digits(digits):
    result = fit(digits)
    probabilities = predict_proba(result.model, digits["test"][0])
    assert probabilities.shape == (300, 10)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert (probabilities.argmax(1) == digits["test"][1]).mean() > 0.85
    assert result.best_epoch >= 1 and len(result.history) == 4


@pytest.mark.slow
def test_same_data_config_and_seed_give_the_same_model(digits):
    first, second = fit(digits, epochs=2), fit(digits, epochs=2)
    assert first.history == second.history
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fit(digits, epochs=2, seed=1).history != first.history


def test_an_epoch_repeats_a_small_training_set_in_fresh_orders():
    order = epoch_order(100, 320, np.random.default_rng(0))
    passes = order.reshape(4, 100)  # 320 images need four whole passes over 100
    assert all(sorted(p) == list(range(100)) for p in passes)
    assert len({tuple(p) for p in passes}) == 4
    assert len(epoch_order(500, 320, np.random.default_rng(0))) == 500  # a larger set: one pass
    assert len(epoch_order(100, 0, np.random.default_rng(0))) == 100


def test_a_small_training_set_gets_min_epoch_images_worth_of_steps(digits):
    images, labels = digits["train"]
    steps = []
    hook = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        for min_images in (320, 0):
            train(
                TrainConfig(epochs=2, batch_size=32, min_epoch_images=min_images),
                train_images=images[:100],
                train_labels=labels[:100],
                dev_images=images[:0],
                dev_labels=labels[:0],
                num_classes=10,
            )
    finally:
        hook.remove()
    assert len(steps) == 2 * 13 + 2 * 4  # 400 images a epoch in batches of 32, then 100


def test_training_needs_two_classes(digits):
    images, labels = digits["train"]
    with pytest.raises(ValueError, match="at least two classes"):
        train(
            TrainConfig(epochs=1),
            train_images=images[:20],
            train_labels=np.zeros(20, dtype=int),
            dev_images=images[:5],
            dev_labels=labels[:5],
            num_classes=10,
        )


@pytest.mark.parametrize("architecture", ["small_cnn", "resnet18", "mobilenet_v3_small"])
def test_every_architecture_builds_with_random_weights_and_runs(architecture):
    model = build_model(architecture, 7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


def test_pretrained_backbone_weights_load_from_a_local_file_with_a_new_head(tmp_path):
    source = build_model("resnet18", 1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pt")
    model = build_model("resnet18", 5, pretrained_path=tmp_path / "resnet18.pt")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 5
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own unpickling error for junk
        build_model("resnet18", 5, pretrained_path=tmp_path / "junk.pt")


def test_default_architecture_follows_image_size():
    assert default_architecture(8, 8) == "small_cnn"
    assert default_architecture(640, 480) == "mobilenet_v3_small"


def test_evaluation_matches_scikit_learn():
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    y_pred[:100] = y_true[:100]
    y_true[y_true == 3] = 1  # class "d" has no test image (but is predicted): its recall and F1 are undefined
    y_pred[y_pred == 2] = 0  # class "c" is never predicted: its precision is undefined
    result = evaluate(y_true, y_pred, labels=["a", "b", "c", "d"])
    assert result.accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    f1 = f1_score(y_true, y_pred, average=None, labels=[0, 1, 2])
    assert [result.per_class[name]["f1"] for name in "abc"] == pytest.approx(list(f1), abs=1e-12)
    assert result.per_class["d"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert result.per_class["c"]["precision"] is None and result.per_class["c"]["recall"] == 0.0
    # The baseline is the test split's own most frequent class, whatever the training split held.
    majority = int(np.bincount(y_true).argmax())
    assert result.baseline_label == "abcd"[majority] and majority == 1
    assert result.baseline_accuracy == pytest.approx((y_true == majority).mean())
    assert sum(map(sum, result.confusion)) == 200
    assert result.wrong == [int(i) for i in np.flatnonzero(y_true != y_pred)]


def test_promotion_refuses_a_significantly_worse_candidate_and_accepts_an_equal_one():
    champion = np.array([True] * 100)
    worse = champion.copy()
    worse[:12] = False
    decision = decide_promotion(champion, worse)
    assert not decision.promote and decision.rule == "significantly worse"
    assert (decision.champion_only_right, decision.candidate_only_right) == (12, 0)
    assert decision.p_value == pytest.approx(binomtest(0, 12, 0.5).pvalue)
    assert decision.candidate_accuracy == 0.88 and decision.champion_accuracy == 1.0
    better = decide_promotion(worse, champion)
    assert better.promote and better.candidate_only_right == 12 and better.rule == "not worse"


def test_a_regression_within_the_tests_noise_is_refused_and_a_tie_promotes():
    """The case seen in the real loop: 0.909 against the champion's 0.934 on 121 items, McNemar p=0.45."""
    rng = np.random.default_rng(0)
    champion = np.zeros(121, dtype=bool)
    champion[:113] = True  # 0.934
    candidate = champion.copy()
    candidate[:5] = False  # the champion alone right on 5 ...
    candidate[113:115] = True  # ... the candidate alone on 2: 110/121 = 0.909
    refused = decide_promotion(champion, candidate)
    assert refused.p_value == pytest.approx(binomtest(2, 7, 0.5).pvalue) and refused.p_value > 0.4
    assert not refused.promote and refused.rule == "below the champion" and "0.909" in refused.reason
    # Different items right, the same count: a tie, so the newer model (trained on more labels) takes over.
    shuffled = rng.permutation(champion)
    tie = decide_promotion(champion, shuffled)
    assert tie.promote and tie.candidate_accuracy == tie.champion_accuracy and tie.rule == "not worse"
    # One item in 121 (0.8 points) is past the default half-point tolerance, within a two-point one.
    one_less = champion.copy()
    one_less[0] = False
    assert not decide_promotion(champion, one_less).promote
    assert decide_promotion(champion, one_less, tolerance=0.02).promote


def test_a_dev_split_too_small_to_judge_an_epoch_is_not_carved():
    labels = np.arange(900) % 10
    fit_positions, dev = dev_split(labels, seed=0, min_dev=100)
    assert len(dev) == 0 and len(fit_positions) == 900  # 10% would be 90 images: every label trains
    fit_positions, dev = dev_split(np.arange(1000) % 10, seed=0, min_dev=100)
    assert len(dev) == 100 and len(np.intersect1d(fit_positions, dev)) == 0


def test_without_a_dev_split_the_weights_are_averaged_over_the_last_epochs(digits):
    images, labels = digits["train"][0][:200], digits["train"][1][:200]
    no_dev = {"dev_images": images[:0], "dev_labels": labels[:0]}

    def fit_small(average_epochs):
        config = TrainConfig(epochs=3, min_epoch_images=0, average_epochs=average_epochs)
        return train(config, train_images=images, train_labels=labels, num_classes=10, **no_dev)

    last, one, three = fit_small(0), fit_small(1), fit_small(3)
    assert last.history == one.history == three.history  # the same training; only what is kept differs
    assert last.best_epoch == three.best_epoch == 3
    for a, b in zip(last.model.state_dict().values(), one.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float())  # the average of one epoch is that epoch
    weights = [
        (a.float() - b.float()).abs().max().item()
        for a, b in zip(last.model.state_dict().values(), three.model.state_dict().values(), strict=True)
    ]
    assert max(weights) > 1e-3  # the average of three epochs is not the last one
