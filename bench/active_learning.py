"""Active learning on scikit-learn's digits, driving the service's own training and mining code in this process.

The setup of ../shared/design/TARGETS.md: a fixed stratified test split of 540 images, a pool of
1,257; 20 random labels to start (the same 20 for every strategy of a seed), then batches of 20;
every strategy against random, over ``--seeds`` seeds. Each round:

* trains the small CNN from scratch with ``flywheel.training.train`` (the function the ``train`` job
  calls), re-initialised with a new seed each round;
* scores the unlabeled pool with ``flywheel.training.artefacts.embed_and_predict`` (what the ``mine`` job runs
  over each batch of images), giving probabilities and embeddings;
* chooses the next 20 as the ``mine`` job does: ``flywheel.training.strategies.shortlist`` over the pool read
  in chunks, then the strategy's ``query`` on the shortlist.

Training, kept affordable on 2 shared cores: the service's ``TrainConfig`` with ``--epochs`` (15)
epochs, batch 32, 16 px input (``training.input_size``; the digits are 8 px), the service's default
augmentation and ``min_epoch_images`` (so 100 labels get as many optimizer steps per epoch as 1,024), one
torch thread, no dev split (the last epoch is kept). Campaigns run ``--jobs`` at a time in worker processes.

Prints accuracy against labels, the labels each strategy needs to reach 99% of the accuracy of the
same model trained on the whole pool (on the curve averaged over seeds), the saving against random,
and the worst gap to random after the first 100 labels; saves the learning curves to
``bench/out/active_learning.png``. Run ``./dev bench active_learning`` (``--seeds``, ``--labels``,
``--epochs``, ``--strategies``, ``--jobs``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from flywheel.serving.preprocess import to_array
from flywheel.training.artefacts import embed_and_predict
from flywheel.training.fit import TrainConfig, predict_proba, train
from flywheel.training.strategies import STRATEGIES, Pool, get_strategy, shortlist
from storage.projects import MiningSettings

TEST_SIZE, START, BATCH, INPUT_SIZE, CHUNK = 540, 20, 20, 16, 256
LEVEL = 0.99  # of the whole pool's accuracy
TARGET_SAVING, CLEARLY_WORSE = 0.65, 0.01  # "clearly": 0.01 is about five of the 540 test images
OUT = Path(__file__).parent / "out" / "active_learning.png"


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every digit through the service's preprocessing; the pool and test positions."""
    data = load_digits()
    images = np.stack(
        [to_array(Image.fromarray((p * 16).clip(0, 255).astype(np.uint8), mode="L"), INPUT_SIZE) for p in data.images]
    )
    pool, test = train_test_split(
        np.arange(len(data.target)), test_size=TEST_SIZE, stratify=data.target, random_state=0
    )
    return images, data.target, np.sort(pool), np.sort(test)


class Campaign:
    def __init__(self, images: np.ndarray, labels: np.ndarray, pool: np.ndarray, test: np.ndarray, epochs: int):
        self.images, self.labels, self.pool, self.test, self.epochs = images, labels, pool, test, epochs

    def fit(self, labeled: np.ndarray, seed: int) -> tuple[float, torch.nn.Module]:
        config = TrainConfig(epochs=self.epochs, patience=self.epochs, batch_size=32, seed=seed, threads=1)
        result = train(
            config,
            train_images=self.images[labeled],
            train_labels=self.labels[labeled],
            dev_images=self.images[:0],
            dev_labels=self.labels[:0],
            num_classes=10,
        )
        predicted = predict_proba(result.model, self.images[self.test]).argmax(1)
        return float((predicted == self.labels[self.test]).mean()), result.model

    def run(self, strategy_name: str, seed: int, budget: int) -> list[tuple[int, float]]:
        """(labels, test accuracy) after each round, from the start to ``budget`` labels."""
        strategy = get_strategy(strategy_name)
        labeled = np.random.default_rng(seed).choice(self.pool, START, replace=False)
        curve = []
        for round_ in range(budget):
            accuracy, model = self.fit(labeled, seed=seed * 1000 + round_)
            curve.append((len(labeled), accuracy))
            if len(labeled) >= budget:
                return curve
            unlabeled = np.setdiff1d(self.pool, labeled)
            embeddings, probabilities = embed_and_predict(model, self.images[unlabeled])
            scored = Pool.from_probabilities(probabilities, ids=unlabeled, embeddings=embeddings)
            chunks = (scored.take(np.arange(s, min(s + CHUNK, len(scored)))) for s in range(0, len(scored), CHUNK))
            kept = shortlist(strategy, chunks, BATCH, seed=seed + round_)
            picked = kept.ids[strategy.query(kept, BATCH, seed=seed + round_)]
            labeled = np.concatenate([labeled, picked])
        return curve


_campaign: Campaign | None = None


def start_worker(epochs: int) -> None:
    """Each worker process loads the digits once and trains on one torch thread."""
    global _campaign
    torch.set_num_threads(1)
    _campaign = Campaign(*load(), epochs=epochs)


def whole_pool(seed: int) -> float:
    assert _campaign is not None
    return _campaign.fit(_campaign.pool, seed=seed)[0]


def campaign(name: str, seed: int, budget: int) -> tuple[dict[int, float], float]:
    assert _campaign is not None
    started = time.perf_counter()
    curve = dict(_campaign.run(name, seed, budget))
    return curve, time.perf_counter() - started


def first_reaching(curve: dict[int, float], level: float) -> int | None:
    return next((n for n, accuracy in sorted(curve.items()) if accuracy >= level), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=700, help="Labels each campaign goes up to.")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="Comma-separated; random always runs.")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Campaigns run at a time.")
    args = parser.parse_args()
    names = ["random", *[s for s in args.strategies.split(",") if s and s != "random"]]
    default = MiningSettings().strategy
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {args.jobs} campaigns at a time (1 torch thread "
        f"each); pool {len(load()[2])}, test {TEST_SIZE} (stratified); start {START}, batches of {BATCH}, up to "
        f"{args.labels} labels; small CNN from scratch each round, {args.epochs} epochs (each at least "
        f"{TrainConfig().min_epoch_images} images), {INPUT_SIZE} px; seeds {args.seeds}; service default "
        f"strategy: {default}",
        flush=True,
    )
    with ProcessPoolExecutor(args.jobs, initializer=start_worker, initargs=(args.epochs,)) as executor:
        full = list(executor.map(whole_pool, range(args.seeds)))
        for seed, accuracy in enumerate(full):
            print(f"whole pool, seed {seed}: test accuracy {accuracy:.3f}", flush=True)
        level = LEVEL * float(np.mean(full))
        print(f"whole pool, mean: {np.mean(full):.3f}; {LEVEL:.0%} of it: {level:.3f}", flush=True)

        runs = {
            executor.submit(campaign, name, seed, args.labels): (name, seed)
            for seed in range(args.seeds)
            for name in names
        }
        curves: dict[str, list[dict[int, float]]] = {name: [] for name in names}
        for done in as_completed(runs):
            name, seed = runs[done]
            curve, seconds = done.result()
            curves[name].append(curve)
            reached = first_reaching(curve, level)
            print(
                f"seed {seed} {name:>16}: reaches {level:.3f} at {reached or f'> {args.labels}'} labels, "
                f"{seconds:.0f} s",
                flush=True,
            )

    sizes = sorted(curves["random"][0])
    mean = {name: {n: float(np.mean([c[n] for c in runs])) for n in sizes} for name, runs in curves.items()}
    shown = [n for n in sizes if n in (20, 40, 60, 100, 140, 200) or n % 100 == 0]
    print("\nmean test accuracy against labels")
    print(f"{'labels':>16} " + " ".join(f"{n:>6}" for n in shown))
    for name in names:
        print(f"{name:>16} " + " ".join(f"{mean[name][n]:6.3f}" for n in shown))

    needed = {name: first_reaching(mean[name], level) for name in names}
    baseline = needed["random"]
    print(f"\nlabels to reach {LEVEL:.0%} of the whole pool's accuracy ({level:.3f}), mean curve of {args.seeds} seeds")
    for name in names:
        gap = min(mean[name][n] - mean["random"][n] for n in sizes if n > 100)
        if needed[name] is None:
            reach, saving = f"> {args.labels}", "n/a"
        elif baseline is None:
            reach, saving = str(needed[name]), f">= {1 - needed[name] / args.labels:.0%} (random: > {args.labels})"
        else:
            reach, saving = str(needed[name]), f"{1 - needed[name] / baseline:.0%}"
        worse = "clearly worse" if gap < -CLEARLY_WORSE else "never clearly worse"
        print(
            f"{name:>16}: {reach:>6} labels, saving vs random {saving}; after 100 labels {worse} (min gap {gap:+.3f})"
        )

    if default in needed and needed[default] is not None:
        reference = baseline or args.labels
        saving = 1 - needed[default] / reference
        gap = min(mean[default][n] - mean["random"][n] for n in sizes if n > 100)
        ok = saving >= TARGET_SAVING and gap >= -CLEARLY_WORSE
        print(
            f"\nservice default ({default}): saving {saving:.0%}{'' if baseline else ' (at least)'}, min gap to random "
            f"after 100 labels {gap:+.3f} (target >= {TARGET_SAVING:.0%} and never clearly worse: "
            f"{'PASS' if ok else 'MISS'})"
        )
    plot(mean, curves, level, args)


def plot(mean: dict[str, dict[int, float]], curves: dict[str, list[dict[int, float]]], level: float, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, points in mean.items():
        sizes = sorted(points)
        spread = np.array([[c[n] for n in sizes] for c in curves[name]])
        axes.plot(sizes, [points[n] for n in sizes], label=name, linewidth=2 if name == "random" else 1.5)
        axes.fill_between(sizes, spread.min(0), spread.max(0), alpha=0.15)
    axes.axhline(level, color="grey", linestyle="--", linewidth=1, label=f"{LEVEL:.0%} of the whole pool")
    axes.set(
        xlabel="labels",
        ylabel="test accuracy (540 digits)",
        ylim=(0.8, 1.0),
        title=f"Active learning on the digits: small CNN, mean of {args.seeds} seeds (band: min to max)",
    )
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=120, bbox_inches="tight")
    print(f"learning curves: {OUT}")


if __name__ == "__main__":
    main()
