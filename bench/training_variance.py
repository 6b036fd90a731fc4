"""How much a training from scratch on few labels varies with its seed, with the service's recipe.

The digits at the small CNN's 32 px; a fixed stratified test split of 540 images; for 100, 200 and 400
labels (a fixed stratified subset of the rest), one training per seed through the training core with the
training job's own dev split. Two recipes in the same run: ``early stopping`` (a 10% dev split whatever
its size, the best epoch's weights: the service before issue 19) and ``service`` (the current defaults:
no dev split under ``min_dev_images``, weights averaged over the last ``average_epochs`` epochs).

Prints, per size and recipe, the test accuracy of every seed, the mean, the standard deviation and the
range, and the ratio of the two standard deviations (aim from issue 19: halve the spread).

Run ``.venv/bin/python bench/training_variance.py`` (``--seeds N``, ``--sizes 100,200,400``, ``--jobs N``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from flywheel.serving.preprocess import to_array
from flywheel.training.datasets import dev_split
from flywheel.training.fit import TrainConfig, predict_proba, train

RECIPES = {
    "early stopping": TrainConfig(min_dev_images=0, average_epochs=0),
    "service": TrainConfig(),
}


def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    images = np.stack([to_array(Image.fromarray((x * 16).clip(0, 255).astype(np.uint8)), 32) for x in data.images])
    return images, data.target


def one(recipe: str, size: int, seed: int) -> tuple[str, int, int, float, float]:
    images, labels = digits()
    pool, test = train_test_split(np.arange(len(labels)), test_size=540, stratify=labels, random_state=0)
    chosen, _ = train_test_split(pool, train_size=size, stratify=labels[pool], random_state=0)
    config = replace(RECIPES[recipe], seed=seed, threads=1)
    fit, dev = dev_split(labels[chosen], seed=seed, min_dev=config.min_dev_images)
    started = time.perf_counter()
    result = train(
        config,
        train_images=images[chosen[fit]],
        train_labels=labels[chosen[fit]],
        dev_images=images[chosen[dev]],
        dev_labels=labels[chosen[dev]],
        num_classes=10,
    )
    accuracy = float((predict_proba(result.model, images[test]).argmax(1) == labels[test]).mean())
    return recipe, size, seed, accuracy, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="100,200,400")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = [(recipe, size, seed) for size in sizes for recipe in RECIPES for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, *zip(*runs, strict=True)))
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; 1 torch thread per training, {args.jobs} at once")
    print(f"test split 540 digits; seeds 0..{args.seeds - 1}; TrainConfig defaults otherwise\n")
    spread: dict[tuple[str, int], float] = {}
    for size in sizes:
        for recipe in RECIPES:
            scores = [a for r, s, _, a, _ in results if r == recipe and s == size]
            seconds = statistics.median(t for r, s, _, _, t in results if r == recipe and s == size)
            spread[recipe, size] = statistics.stdev(scores)
            print(
                f"{size:4d} labels, {recipe:14s}: "
                + " ".join(f"{a:.3f}" for a in scores)
                + f" | mean {statistics.mean(scores):.3f}, std {spread[recipe, size]:.4f}, "
                f"range {max(scores) - min(scores):.3f}, median {seconds:.1f} s a training"
            )
        ratio = spread["service", size] / spread["early stopping", size] if spread["early stopping", size] else 0.0
        print(f"{size:4d} labels: std service / early stopping = {ratio:.2f} (aim <= 0.5)\n")


if __name__ == "__main__":
    main()
