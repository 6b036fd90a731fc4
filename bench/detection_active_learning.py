"""Active learning for boxes on synthetic scenes, driving the service's own detector training and box mining.

A fixed set of 64 px canvases of 1-3 squares and discs (``tests/shapes.py``): a pool of ``--pool`` (400) and a test
set of 150. Each campaign starts from ``--start`` (10) random labels (the same for both strategies of a seed), then
adds batches of ``--batch`` (10) up to ``--labels`` (120). Each round:

* trains ``centernet_small`` from scratch with ``train_detector`` (the ``train`` job's core) on the labeled boxes,
  the service's recipe at this budget: ``--epochs`` (4) epochs of at least ``--epoch-images`` (256) images, batch
  16, one thread, the round's seed the same in both strategies' campaigns of a seed;
* scores the unlabeled pool as the ``mine`` job does: the detector's outputs decoded by the serving code
  (``decode_centernet``, with the embedding), each image's (confidence, entropy) from ``box_mining.image_uncertainty``;
* picks the next batch with ``box_mining.choose_boxes_first`` under the project's mining settings: the default
  strategy (``margin_kcenter``) or ``random`` (``--strategies`` adds others, shown without a verdict).

mAP@.5 on the test set with the service's ``coco_figures`` (pycocotools). The level is 95% of the mAP@.5 of the same
recipe trained on the whole pool (median of the seeds); prints, on the curves averaged over ``--seeds`` (3), the
labels each strategy needs to reach it (read on the straight line between the two rounds around the crossing), the
saving against random, and the worst gap to random after the first 100 labels. Aim (issue 14): >= 30% fewer labels
than random, never clearly worse (more than 0.02 mAP@.5 below) after 100. ``--seed-offset`` runs other campaign
seeds than the verdict's 0-2. ``--quick``: one seed, labels up to 100.

Why batches of 10: the shapes are easy, the whole pool's level is reached within 30-60 labels, so at the earlier
start and batches of 20 one batch was 33-50% of the labels needed and one round's training noise (0.03-0.06 mAP@.5)
decided the verdict: seeds 0-2 read 38 against 73 labels (48% fewer) while seeds 20-22 read 42 against 58 (27%) and
3-5 37 against 48 (24%). At 10 a batch is a quarter to a third of them; the training noise is unchanged (one round of
one campaign still drops by up to 0.14, e.g. random seed 20 at 110 labels), so the verdict stays a reading of three
noisy curves. The choices (start and batch 10, labels to 120, the default strategy left as it is) were made on
seeds 10-12, then read on 0-2, 20-22 and 3-5, none of them tuned on.

Measured at the defaults (per seed, then the mean curves' reading, which is the verdict), on the shared 2-core
machine at load average 3-7, two runs at once: 1,500-1,960 s a run; one run is 1,120 cpu s on one thread, so about
19 min on a quiet core:

* seeds 0-2 (level 0.943): margin_kcenter 29, 42, 30; random 58, 47, 49; mean curves 37 against 51: 28% fewer
  (FAIL, aim 30%); worst gap after 100 labels +0.013 (PASS).
* seeds 20-22 (level 0.939): margin_kcenter 30, 39, 28; random 36, 45, 44; mean curves 34 against 43: 22% fewer
  (FAIL); +0.008 (PASS).
* seeds 3-5 (level 0.941): margin_kcenter 34, 36, 30; random 38, 39, 47; mean curves 34 against 40: 15% fewer
  (FAIL); +0.012 (PASS).
* exploration seeds 10-12 (level 0.940): margin_kcenter 27, 38, 28; random 42, 49, 40; mean curves 35 against 43:
  19% fewer; +0.003. There the other strategies read: ``margin`` (the top n by summed doubt, no k-center) 26, 33,
  31, mean curves 30 (30% fewer); ``entropy`` (of a box's class scores) 37, 51, 50, mean curves 49 (worse than
  random).

So the default saves 15-28% of the labels on the mean curves (34%, 23%, 19% and 29% on the mean of the seeds' own
readings, which the bench prints beside them): better than random on every set and never worse after 100 labels,
but short of the 30% aim on every mean-curve reading. A mean curve reads later than its seeds do because one seed's
slow round (margin_kcenter seed 11 at 30 labels, 0.856) pulls the mean down where the curves are steep. The
service's default was left as it is: ``margin`` read 30 against 35 on the exploration seeds' mean curves but the
same per seed (30 against 31 on average), within the noise, and k-center's worth is spreading a batch over
near-duplicates (frames of one video), which these independent scenes never have. Read afterwards on seeds 3-5
(``--strategies margin``), ``margin`` needs 39, 39, 29, mean curve 37: behind the default's 34 there.
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
    the crossing (a batch is a quarter to a third of the labels needed here; the line reads between them); the
    first round's labels if it starts above, None if it never reaches it."""
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
    for name, runs in curves.items():
        # Shown beside the verdict: a mean curve reads later than its seeds where one slow round pulls it down.
        each = [labels for c in runs if (labels := first_reaching(c, level)) is not None]
        if len(each) == len(runs):
            print(f"{name}: the mean of the seeds' own readings {statistics.mean(each):.0f} labels")
    theirs = needed.get("random")
    for name in strategies:
        if name == "random" or "random" not in mean:
            continue
        ours = needed[name]
        after = [n for n in mean[name] if n >= 100]
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
        if not after:
            print(f"-: no round after 100 labels to compare {name} with random at (--labels {args.labels})")
            continue
        worst = min(mean[name][n] - mean["random"][n] for n in after)
        mark = ("PASS" if worst >= -CLEARLY_WORSE else "FAIL") if verdict else "-"
        print(f"{mark}: {name}'s worst gap to random after 100 labels {worst:+.3f} mAP@.5 (aim >= -{CLEARLY_WORSE})")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
