"""Active learning for boxes on synthetic scenes, driving the service's own detector training and box mining.

A fixed set of 64 px canvases of 1-3 squares and discs (``tests/shapes.py``): a pool of ``--pool`` (400) and a test
set of 150. Each campaign starts from 20 random labels (the same 20 for both strategies of a seed), then adds
batches of 20 up to ``--labels`` (140). Each round:

* trains ``centernet_small`` from scratch with ``train_detector`` (the ``train`` job's core) on the labeled boxes,
  the service's recipe at this budget: ``--epochs`` (4) epochs of at least ``--epoch-images`` (256) images, batch
  16, one thread, a new seed per round;
* scores the unlabeled pool as the ``mine`` job does: the detector's outputs decoded by the serving code
  (``decode_centernet``, with the embedding), each image's (confidence, entropy) from ``box_mining.image_uncertainty``;
* picks the next 20 with ``box_mining.choose_boxes_first`` under the project's mining settings: the default
  strategy (``margin_kcenter``) or ``random``.

mAP@.5 on the test set with the service's ``coco_figures`` (pycocotools). The level is 95% of the mAP@.5 of the same
recipe trained on the whole pool (median of the seeds); prints, on the curves averaged over ``--seeds`` (3), the
labels each strategy needs to reach it, the saving against random, and the worst gap to random after the first 100
labels. Aim (issue 14): >= 30% fewer labels than random, never clearly worse (more than 0.02 mAP@.5 below) after 100.
``--seed-offset`` runs other campaign seeds than the verdict's 0-2 (choices were made on 10-13, then checked here).

Budget: 2 strategies x 3 seeds x 7 rounds + 3 whole-pool trainings, each about 1,000 image passes at 64 px, plus
scoring the pool; about 10 cpu s a training, 571 s in all at load average 2-3 on the shared 2-core machine. The shapes
are easy: the whole pool's level is reached within 40-60 labels, so at batches of 20 the labels needed are coarse (one
batch is 33-50% of them). ``--quick``: one seed, labels up to 100.

So the labels needed are read between rounds: on the straight line between the two rounds around the crossing, per
seed and on the mean curves (the verdict is the mean curves').

Measured at the defaults, with an image's doubts summed over its boxes (``image_uncertainty``): whole pool 0.990, 0.987,
0.992 -> level 0.941. Labels to the level per seed, margin_kcenter 37, 38, 39; random 44, 96, 55. Mean curves
margin_kcenter 20: 0.806, 40: 0.956, 60: 0.978, 80: 0.979, 100: 0.986, 120: 0.990, 140: 0.974; random 20: 0.806, 40:
0.893, 60: 0.937, 80: 0.943, 100: 0.967, 120: 0.983, 140: 0.920. Level reached at 38 labels against 73: 48% fewer (aim
met); worst gap to random after 100 labels +0.007 (aim met). Random's mean leans on its seed 1 (96 labels, in both
runs): on seeds 20-22 (``--seed-offset 20``, 582 s) the default needs 46, 38, 42 and random 60, 57, 48, mean curves 42
against 58, 27% fewer (short of the aim), +0.010 after 100; on seeds 3-5 (618 s) 38, 36, 37 against 46, 53, 48, mean
curves 37 against 48, 24% fewer (short), +0.006. Over all nine seeds the default needs 39 labels on average against
random's 56 (31% fewer; by the medians, 38 against 53, 28%): the aim is met on the verdict's seeds only. With the least
confident box alone (before), seeds 0-2 read 52 against 70 (25%), per seed 48, 52, 55. On the exploration seeds 10-12 (3
rounds after the start, level 0.943) random reaches the level at 39 labels on the mean curve: the least confident box
53, summed doubts with k-center over 3n (the default) 40, over 2n 38, the top n by summed doubt alone 37; there no
strategy could save 30%. Round-to-round training noise at 4 epochs is large (random seed 1 stays at 0.87-0.88 from 40 to
80 labels; both arms dip at 140), of the size of the differences between rounds.
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import time

import numpy as np
import torch
from PIL import Image

from flywheel.serving.detection import Detections, decode_centernet
from flywheel.training.box_mining import choose_boxes_first, image_uncertainty
from flywheel.training.detection_eval import coco_figures
from flywheel.training.detection_fit import BoxTargets, train_detector
from flywheel.training.fit import TrainConfig, to_tensor
from flywheel.training.strategies import Pool
from storage.models import Split
from storage.projects import MiningSettings
from tests.shapes import SHAPE_LABELS, scenes

TEST = 150
LEVEL, TARGET_SAVING, CLEARLY_WORSE = 0.95, 0.30, 0.02
DEFAULT = MiningSettings().strategy


def load(pool: int) -> tuple[np.ndarray, list[BoxTargets], np.ndarray, list[BoxTargets]]:
    def arrays(drawn: list[tuple[bytes, list[dict]]]) -> tuple[np.ndarray, list[BoxTargets]]:
        images = np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png, _ in drawn])
        targets = [
            BoxTargets(
                np.array([[b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]] for b in boxes], np.float32).reshape(
                    -1, 4
                ),
                np.array([SHAPE_LABELS.index(b["label"]) for b in boxes], np.int64),
            )
            for _, boxes in drawn
        ]
        return images, targets

    return *arrays(scenes(pool, seed=500)), *arrays(scenes(TEST, seed=600))


def detections(model: torch.nn.Module, images: np.ndarray) -> list[Detections]:
    """The serving decode of the detector's four outputs, embedding included (what mining reads from ONNX)."""
    out: list[Detections] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), 64):
            heat, size, offset, embedding = model(to_tensor(images[start : start + 64]))
            out.extend(decode_centernet(heat.numpy(), size.numpy(), offset.numpy(), embedding.numpy()))
    return out


class Campaigns:
    def __init__(self, pool: int, epochs: int, epoch_images: int) -> None:
        self.images, self.targets, self.test_images, self.test_targets = load(pool)
        self.epochs, self.epoch_images = epochs, epoch_images

    def fit(self, labeled: np.ndarray, seed: int) -> tuple[float, torch.nn.Module]:
        config = TrainConfig(
            architecture="centernet_small",
            epochs=self.epochs,
            batch_size=16,
            min_epoch_images=self.epoch_images,
            threads=1,
            seed=seed,
        )
        result = train_detector(
            config, images=self.images[labeled], targets=[self.targets[i] for i in labeled], num_classes=2
        )
        found = detections(result.model, self.test_images)
        return coco_figures(self.test_targets, found, labels=SHAPE_LABELS).map50, result.model

    def run(self, strategy: str, seed: int, *, start: int, batch: int, budget: int) -> list[tuple[int, float]]:
        rng = np.random.default_rng(seed)
        labeled = rng.choice(len(self.images), start, replace=False)
        settings = MiningSettings.model_validate({"strategy": strategy, "batch_size": batch, "seed": seed})
        curve = []
        for round_ in itertools.count():
            score, model = self.fit(labeled, seed=seed * 1000 + round_)
            curve.append((len(labeled), score))
            if len(labeled) >= budget:
                break
            rest = np.setdiff1d(np.arange(len(self.images)), labeled)
            found = detections(model, self.images[rest])
            figures = np.array([image_uncertainty(d) for d in found], dtype=np.float64).reshape(-1, 2)
            pool = Pool(
                ids=rest.astype(np.int64),
                confidence=figures[:, 0],
                margin=2 * figures[:, 0] - 1,
                entropy=figures[:, 1],
                embeddings=np.stack([d.embedding for d in found if d.embedding is not None]),
            )
            picked, _ = choose_boxes_first({Split.train: pool, Split.test: None}, settings)
            labeled = np.concatenate([labeled, np.array(picked[:batch], dtype=np.int64)])
        return curve


def first_reaching(curve: dict[int, float], level: float) -> float | None:
    """Labels at which ``curve`` first reaches ``level``, read on the straight line between the two rounds around
    the crossing (a batch of 20 is a third of the labels needed here; the line reads between them); the first
    round's labels if it starts above, None if it never reaches it."""
    points = sorted(curve.items())
    if points and points[0][1] >= level:
        return float(points[0][0])
    for (n0, s0), (n1, s1) in itertools.pairwise(points):
        if s1 >= level:
            return n0 + (n1 - n0) * (level - s0) / (s1 - s0)
    return None


def shown_labels(labels: float | None, budget: int) -> str:
    return f"{labels:.0f}" if labels is not None else f"> {budget}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--start", type=int, default=10, help="random labels before the first round")
    parser.add_argument("--batch", type=int, default=10, help="labels added per round")
    parser.add_argument("--labels", type=int, default=120)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--seed-offset", type=int, default=0, help="campaign seeds from here: explore on others than the verdict's 0-2"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--epoch-images", type=int, default=256)
    parser.add_argument(
        "--strategies", default=f"{DEFAULT},random", help="comma-separated; the verdict is the default's against random"
    )
    parser.add_argument("--quick", action="store_true", help="one seed, up to 100 labels")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.labels = 1, 100
    strategies = args.strategies.split(",")
    started = time.perf_counter()
    campaigns = Campaigns(args.pool, args.epochs, args.epoch_images)
    seeds = range(args.seed_offset, args.seed_offset + args.seeds)
    whole = [campaigns.fit(np.arange(args.pool), seed=10_000 + s)[0] for s in seeds]
    full = statistics.median(whole)
    level = LEVEL * full
    print(
        f"pool {args.pool}, test {TEST} canvases of 64 px; start {args.start}, batches of {args.batch}; "
        f"{args.epochs} epochs of >= {args.epoch_images} images, batch 16, 1 thread; whole pool mAP@.5 "
        f"{', '.join(f'{w:.3f}' for w in whole)} -> level {level:.3f}",
        flush=True,
    )
    curves: dict[str, list[dict[int, float]]] = {}
    for strategy in strategies:
        for seed in seeds:
            curve = dict(campaigns.run(strategy, seed, start=args.start, batch=args.batch, budget=args.labels))
            curves.setdefault(strategy, []).append(curve)
            shown = "  ".join(f"{n}:{s:.3f}" for n, s in sorted(curve.items()))
            reached = shown_labels(first_reaching(curve, level), args.labels)
            print(f"{strategy:15s} seed {seed}: {shown}; reaches {level:.3f} at {reached} labels", flush=True)
    mean = {name: {n: float(np.mean([c[n] for c in runs])) for n in runs[0]} for name, runs in curves.items()}
    needed = {name: first_reaching(curve, level) for name, curve in mean.items()}
    for name, curve in mean.items():
        shown = "  ".join(f"{n}:{s:.3f}" for n, s in sorted(curve.items()))
        print(f"mean {name:15s}: {shown}; reaches {level:.3f} at {shown_labels(needed[name], args.labels)} labels")
    theirs = needed.get("random")
    for name in strategies:
        if name == "random" or "random" not in mean:
            continue
        ours = needed[name]
        after = [n for n in mean[name] if n >= 100]
        worst = min(mean[name][n] - mean["random"][n] for n in after) if after else 0.0
        verdict = name == DEFAULT  # the aim is the default's; other strategies are shown for exploration
        if ours is not None and theirs is not None:
            saving = 1 - ours / theirs
            mark = ("PASS" if saving >= TARGET_SAVING else "FAIL") if verdict else "-"
            print(
                f"{mark}: {name} needs {ours:.0f} labels, random {theirs:.0f}: {saving:.0%} fewer "
                f"(aim >= {TARGET_SAVING:.0%}; on the mean curves, read between rounds)"
            )
        else:
            mark = "FAIL" if verdict else "-"
            print(f"{mark}: not measured within {args.labels} labels ({name}: {ours}, random: {theirs})")
        mark = ("PASS" if worst >= -CLEARLY_WORSE else "FAIL") if verdict else "-"
        print(f"{mark}: {name}'s worst gap to random after 100 labels {worst:+.3f} mAP@.5 (aim >= -{CLEARLY_WORSE})")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
