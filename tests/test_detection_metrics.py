"""Detection math on fixed cases: COCO figures against pycocotools run directly, numpy NMS against torchvision's,
CenterNet decoding, the error categories, the paired promotion gate, and the torchvision detectors' path."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import batched_nms

from flywheel.serving.detection import STRIDE, Detections, decode_centernet, nms
from flywheel.training.detection_eval import (
    coco_figures,
    decide_detection_promotion,
    image_errors,
    image_f1,
)
from flywheel.training.detection_fit import BoxTargets, box_augmentation
from flywheel.training.fit import TrainConfig

LABELS = ["car", "person", "dog"]


def _case(seed: int, images: int = 12) -> tuple[list[BoxTargets], list[Detections]]:
    """Ground truth and jittered, partly wrong, partly missing detections with random scores."""
    rng = np.random.default_rng(seed)
    truth, found = [], []
    for _ in range(images):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(5, 40, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        classes = rng.integers(0, 3, n)
        truth.append(BoxTargets(boxes.astype(np.float32), classes))
        keep = rng.random(n) > 0.2
        jitter = boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        wrong = np.where(rng.random(int(keep.sum())) < 0.15, (classes[keep] + 1) % 3, classes[keep])
        extra = int(rng.integers(0, 3))
        exy = rng.uniform(0, 80, (extra, 2))
        spurious = np.concatenate([exy, exy + rng.uniform(5, 30, (extra, 2))], axis=1)
        found.append(
            Detections(
                np.concatenate([jitter, spurious]),
                rng.uniform(0.05, 1, len(jitter) + extra),
                np.concatenate([wrong, rng.integers(0, 3, extra)]).astype(np.int64),
            )
        )
    return truth, found


def _pycocotools(truth: list[BoxTargets], found: list[Detections], *, category: int | None = None) -> np.ndarray:
    """COCOeval's 12 summary figures, from a COCO dataset built the usual way; one category when asked."""
    dataset = {
        "images": [{"id": i, "width": 200, "height": 200} for i in range(len(truth))],
        "categories": [{"id": k, "name": name} for k, name in enumerate(LABELS)],
        "annotations": [],
    }
    results = []
    for i, (t, d) in enumerate(zip(truth, found, strict=True)):
        for (x1, y1, x2, y2), c in zip(t.boxes.tolist(), t.classes.tolist(), strict=True):
            dataset["annotations"].append(
                {
                    "id": len(dataset["annotations"]) + 1,
                    "image_id": i,
                    "category_id": c,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        for (x1, y1, x2, y2), s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.classes.tolist(), strict=True):
            results.append({"image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = dataset
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        if category is not None:
            evaluation.params.catIds = [category]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_figures_equal_pycocotools_overall_and_per_class(seed):
    truth, found = _case(seed)
    figures = coco_figures(truth, found, labels=LABELS)
    reference = _pycocotools(truth, found)
    assert (figures.map, figures.map50, figures.map75) == pytest.approx(tuple(reference[:3]), abs=1e-12)
    for k, label in enumerate(LABELS):
        own = _pycocotools(truth, found, category=k)
        assert figures.per_class[label]["ap"] == pytest.approx(own[0], abs=1e-12)
        assert figures.per_class[label]["ap50"] == pytest.approx(own[1], abs=1e-12)
        assert figures.per_class[label]["objects"] == sum(int((t.classes == k).sum()) for t in truth)


def test_coco_figures_on_hand_made_cases():
    one = BoxTargets(np.array([[10, 10, 50, 50]], np.float32), np.array([0]))
    perfect = Detections(np.array([[10.0, 10, 50, 50]]), np.array([0.9]), np.array([0]))
    assert coco_figures([one], [perfect], labels=LABELS).map == pytest.approx(1.0)
    # A false box scored above the true one: precision 1/2 at full recall, so AP@.5 is 0.5.
    both = Detections(np.array([[100.0, 100, 140, 140], [10, 10, 50, 50]]), np.array([0.9, 0.8]), np.array([0, 0]))
    figures = coco_figures([one], [both], labels=LABELS)
    assert figures.map50 == pytest.approx(0.5) and figures.per_class["car"]["recall"] == pytest.approx(1.0)
    assert figures.per_class["person"] == {"ap": None, "ap50": None, "recall": None, "objects": 0}
    nothing = coco_figures([one], [Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))], labels=LABELS)
    assert nothing.map50 == 0.0 and nothing.per_class["car"]["recall"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_numpy_nms_keeps_what_torchvision_keeps(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (60, 2))], axis=1)
    scores, classes = rng.random(60), rng.integers(0, 3, 60)
    ours = nms(boxes, scores, classes, iou=0.5)
    theirs = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes), 0.5).numpy()
    assert ours.tolist() == theirs.tolist()


def test_centernet_decoding_reads_peaks_offsets_and_sizes():
    heat = np.zeros((1, 2, 16, 16), np.float32)
    size, offset = np.zeros((1, 2, 16, 16), np.float32), np.zeros((1, 2, 16, 16), np.float32)
    heat[0, 1, 5, 3], size[0, :, 5, 3], offset[0, :, 5, 3] = 0.9, (4, 2), (0.5, 0.25)
    heat[0, 1, 5, 4] = 0.5  # a neighbour of the peak: not a peak itself
    heat[0, 0, 10, 12], size[0, :, 10, 12] = 0.4, (2, 2)
    (found,) = decode_centernet(heat, size, offset)
    assert found.classes.tolist() == [1, 0] and found.scores.tolist() == pytest.approx([0.9, 0.4])
    cx, cy = (3 + 0.5) * STRIDE, (5 + 0.25) * STRIDE
    assert found.boxes[0].tolist() == pytest.approx([cx - 8, cy - 4, cx + 8, cy + 4])
    assert found.boxes[1].tolist() == pytest.approx([44, 36, 52, 44])  # centre (48, 40), 2 cells of 4 px a side


def test_each_error_kind_is_named_and_f1_counts_class_and_place():
    truth = BoxTargets(
        np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], np.float32),
        np.array([0, 0, 1, 1]),
    )
    found = Detections(
        np.array([[0.0, 0, 10, 10], [20, 20, 30, 30], [44, 44, 54, 54], [80, 80, 90, 90], [0, 0, 10, 10]]),
        np.array([0.9, 0.8, 0.7, 0.6, 0.1]),  # the last is below the shown score: not counted
        np.array([0, 1, 1, 0, 1]),
    )
    errors = image_errors(truth, found)
    assert errors == {"missed": 1, "false_boxes": 1, "wrong_class": 1, "poor_localization": 1}
    assert image_f1(truth, found) == pytest.approx(2 * 1 / (4 + 4))
    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    assert image_f1(BoxTargets(np.zeros((0, 4), np.float32), np.zeros(0, np.int64)), empty) == 1.0


def test_the_gate_refuses_a_significantly_worse_detector_and_passes_an_equal_one():
    rng = np.random.default_rng(0)
    champion_f1 = rng.uniform(0.7, 1.0, 40)
    worse = decide_detection_promotion(
        champion_f1=champion_f1,
        candidate_f1=champion_f1 - rng.uniform(0.05, 0.3, 40),
        champion_map50=0.9,
        candidate_map50=0.9,
        tolerance=0.005,
    )
    assert not worse.promote and worse.rule == "significantly worse" and worse.p_value < 0.05
    assert worse.statistic is not None and "Wilcoxon" in worse.reason
    same = decide_detection_promotion(
        champion_f1=champion_f1, candidate_f1=champion_f1, champion_map50=0.9, candidate_map50=0.9, tolerance=0.005
    )
    assert same.promote and same.rule == "not worse" and same.p_value == 1.0 and same.statistic is None
    below = decide_detection_promotion(
        champion_f1=champion_f1, candidate_f1=champion_f1, champion_map50=0.9, candidate_map50=0.85, tolerance=0.005
    )
    assert not below.promote and below.rule == "below the champion"


def test_box_augmentation_moves_boxes_with_the_pixels():
    image = np.zeros((64, 64, 3), np.uint8)
    image[10:20, 5:25] = 255
    config = TrainConfig(hflip=True, rotate_degrees=0, scale=0, translate=0, brightness_contrast=0)
    for seed in range(6):
        out = box_augmentation(config, 64, seed=seed)(image=image, bboxes=[[5, 10, 25, 20]], classes=[1])
        ys, xs = np.nonzero(out["image"][:, :, 0] > 128)
        assert list(out["bboxes"][0]) == pytest.approx([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert list(out["classes"]) == [1]


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"])
def test_torchvision_detectors_train_detect_and_export_faithfully(architecture, tmp_path):
    """Random init, a few steps on 96 px scenes, then the same ONNX check a training runs; and pretrained weights
    load from a local file, never a download."""
    from flywheel.training.detection_export import compare_with_torch, export_detector, export_is_faithful
    from flywheel.training.detection_fit import predict_boxes, train_detector
    from flywheel.training.detectors import build_detector

    side = 96 if architecture.startswith("fasterrcnn") else 320  # SSDlite takes its own size only
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, side, side, 3), dtype=np.uint8)
    targets = [BoxTargets(np.array([[10, 10, 40, 50]], np.float32), np.array([i])) for i in range(2)]
    config = TrainConfig(architecture=architecture, epochs=1, batch_size=2, min_epoch_images=2)
    result = train_detector(config, images=images, targets=targets, num_classes=2)
    assert np.isfinite(result.history[0]["loss"])
    found = predict_boxes(result.model, images)
    assert len(found) == 2 and all(d.boxes.shape[1] == 4 for d in found)
    check = compare_with_torch(result.model, export_detector(result.model, side, metadata={}), images)
    assert export_is_faithful(check), check
    saved = tmp_path / "weights.pt"
    torch.save(result.model.state_dict(), saved)
    again = build_detector(architecture, 2, input_size=side, pretrained_path=saved)
    first = next(iter(result.model.state_dict()))
    assert torch.equal(again.state_dict()[first], result.model.state_dict()[first])


def _brute_force_disagreement(a: Detections, b: Detections) -> float:
    """One minus the score-weighted F1 of the best pairing, every pairing tried."""
    from itertools import permutations

    from flywheel.serving.detection import box_ious

    total = a.scores.sum() + b.scores.sum()
    if total == 0:
        return 0.0
    small, large = (a, b) if len(a.scores) <= len(b.scores) else (b, a)
    ious = box_ious(small.boxes, large.boxes) if len(small.scores) and len(large.scores) else None
    best = 0.0
    for chosen in permutations(range(len(large.scores)), len(small.scores)):
        agree = 0.0
        for i, j in enumerate(chosen):
            if ious is not None and ious[i, j] >= 0.5 and small.classes[i] == large.classes[j]:
                agree += min(small.scores[i], large.scores[j])
        best = max(best, agree)
    return float(1 - 2 * best / total)


@pytest.mark.parametrize("seed", range(3))
def test_box_disagreement_equals_a_brute_force_pairing_on_random_cases(seed):
    from flywheel.training.box_mining import box_disagreement

    rng = np.random.default_rng(seed)
    for _ in range(40):
        made = []
        for _side in range(2):
            n = int(rng.integers(0, 5))
            corners = rng.uniform(0, 40, (n, 2))
            boxes = np.hstack([corners, corners + rng.uniform(8, 20, (n, 2))])
            made.append(Detections(boxes, rng.uniform(0.1, 1, n), rng.integers(0, 2, n)))
        # The second answer sometimes the first one moved a little: overlapping pairs of each class.
        if rng.random() < 0.5 and len(made[0].scores):
            jitter = rng.normal(0, 2, made[0].boxes.shape)
            made[1] = Detections(made[0].boxes + jitter, rng.uniform(0.1, 1, len(made[0].scores)), made[0].classes)
        assert box_disagreement(*made) == pytest.approx(_brute_force_disagreement(*made), abs=1e-9)


def test_mining_by_disagreement_puts_an_image_the_two_detectors_disagree_on_before_one_they_agree_on():
    from flywheel.training.box_mining import box_disagreement, choose_boxes_first, image_uncertainty
    from flywheel.training.strategies import Pool
    from storage.models import Split
    from storage.projects import MiningSettings

    car = Detections(np.array([[10.0, 10, 30, 30]]), np.array([0.6]), np.array([0]))
    # Image 1: both models find the same car, a little unsure of it (a margin of 0.2: uncertain to margin).
    # Image 2: the champion finds a car the fresh update, which has seen newer labels, calls a person.
    person = Detections(car.boxes, np.array([0.95]), np.array([1]))
    sure_car = Detections(car.boxes, np.array([0.95]), np.array([0]))
    pairs = {1: (car, car), 2: (sure_car, person)}
    apart = np.array([box_disagreement(*pairs[i]) for i in (1, 2)])
    assert apart[0] == 0.0 and apart[1] == 1.0
    figures = np.array([image_uncertainty(pairs[i][1]) for i in (1, 2)])
    pool = Pool(
        ids=np.array([1, 2]),
        confidence=figures[:, 0],
        margin=2 * figures[:, 0] - 1,
        entropy=figures[:, 1],
        disagreement=apart,
    )
    pools = {Split.train: pool, Split.test: None}
    for strategy, first in (("disagreement", 2), ("margin", 1)):
        order, used = choose_boxes_first(pools, MiningSettings(strategy=strategy, batch_size=2))
        assert (order, used) == ([first, 3 - first], strategy)
    order, used = choose_boxes_first(
        {Split.train: replace(pool, disagreement=None), Split.test: None},
        MiningSettings(strategy="disagreement", batch_size=2),
    )
    assert order == [1, 2] and used.startswith("margin (no fresh update")


def test_an_image_with_more_open_questions_is_less_confident_and_mined_first():
    from flywheel.training.box_mining import choose_boxes_first, image_uncertainty
    from flywheel.training.strategies import Pool
    from storage.models import Split
    from storage.projects import MiningSettings

    def image(*scores: float) -> Detections:
        n = len(scores)
        return Detections(np.tile([10.0, 10, 30, 30], (n, 1)), np.array(scores), np.zeros(n, np.int64))

    # One box is its own max(s, 1 - s); boxes outside the band 0.1-0.9 are settled and count for nothing.
    assert image_uncertainty(image(0.7))[0] == pytest.approx(0.7)
    assert image_uncertainty(image(0.95, 0.05))[0] == 1.0 and image_uncertainty(image())[0] == 1.0
    # Three boxes at 0.7 leave more open than one at 0.6: 1 - 3 x 0.3 against 1 - 0.4.
    found = [image(0.6), image(0.7, 0.7, 0.7, 0.95), image(0.95)]
    figures = np.array([image_uncertainty(d) for d in found])
    assert figures[:, 0] == pytest.approx([0.6, 0.1, 1.0])
    pool = Pool(ids=np.array([1, 2, 3]), confidence=figures[:, 0], margin=2 * figures[:, 0] - 1, entropy=figures[:, 1])
    order, used = choose_boxes_first({Split.train: pool, Split.test: None}, MiningSettings(strategy="margin"))
    assert (order, used) == ([2, 1, 3], "margin")
