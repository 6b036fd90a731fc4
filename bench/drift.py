"""Drift detection on scikit-learn's digits: how often the drift job's two tests catch a shift, and how often they
cry wolf, on the embeddings of a real champion.

A small CNN is trained as the ``train`` job trains it (``flywheel.training.fit.train``, 16 px, one torch thread) on
600 digits of classes 0 to 8; class 9 is never trained on. The reference is 400 other digits of classes 0 to 8, as
the job's reference is the project's images the champion did not train on; windows of ``--window`` (200) inputs
are drawn from the remaining digits, unshifted (``--calm`` windows, 20) or shifted (``--shifted`` windows each):
brightness halved, rotated by 30 degrees, 20% of the inputs from the never-trained class, Gaussian noise (sigma 40
of 255). Each window goes through ``flywheel.monitoring.drift.drift_scores``, the function the job runs: the domain
classifier's cross-validated ROC AUC against the default threshold (> 0.55) and the MMD permutation test's p-value
(< 0.01). Prints the detection rate per shift and the false-alarm rate for each test, and the median seconds per
window. Aims (issue 16): every shift detected in at least 90% of its windows, at most 5% false alarms.
Run ``./dev bench drift`` (``--quick``: 10 calm and 5 shifted windows of 100).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from flywheel.monitoring.drift import drift_scores
from flywheel.serving.preprocess import to_array
from flywheel.training.artefacts import embed_and_predict
from flywheel.training.fit import TrainConfig, train
from storage.projects import MonitoringSettings

INPUT_SIZE, TRAIN, REFERENCE, NOVEL = 16, 600, 400, 9
AIM_DETECTED, AIM_FALSE_ALARMS = 0.9, 0.05


def grey(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L")


def dim(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return grey(pixels * 0.5)


def rotate(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return grey(pixels).rotate(30, resample=Image.Resampling.BILINEAR)


def noisy(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return grey(pixels + rng.normal(0, 40, pixels.shape))


def same(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return grey(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--calm", type=int, default=20, help="Unshifted windows (false alarms).")
    parser.add_argument("--shifted", type=int, default=10, help="Windows per shift.")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="10 calm and 5 shifted windows of 100 inputs")
    args = parser.parse_args()
    if args.quick:
        args.window, args.calm, args.shifted = 100, 10, 5
    torch.set_num_threads(1)
    settings = MonitoringSettings()
    data = load_digits()
    pixels, labels = data.images * 16, data.target
    rng = np.random.default_rng(0)
    known = rng.permutation(np.flatnonzero(labels != NOVEL))  # shuffled: load_digits is ordered by writer
    novel = np.flatnonzero(labels == NOVEL)
    trained, reference, rest = known[:TRAIN], known[TRAIN : TRAIN + REFERENCE], known[TRAIN + REFERENCE :]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, 1 torch thread; small CNN on {TRAIN} digits of "
        f"classes 0-8 ({args.epochs} epochs, {INPUT_SIZE} px); reference {REFERENCE}; windows of {args.window} from "
        f"{len(rest)} other digits; thresholds: AUC > {settings.drift_auc}, MMD p < {settings.drift_p}",
        flush=True,
    )

    def arrays(images: list[Image.Image]) -> np.ndarray:
        return np.stack([to_array(image, INPUT_SIZE) for image in images])

    started = time.perf_counter()
    config = TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=32, seed=0, threads=1)
    model = train(
        config,
        train_images=arrays([same(pixels[i], rng) for i in trained]),
        train_labels=labels[trained],
        dev_images=np.zeros((0, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32),
        dev_labels=labels[:0],
        num_classes=10,
    ).model
    print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)

    def embed(images: list[Image.Image]) -> np.ndarray:
        return embed_and_predict(model, arrays(images))[0]

    reference_embeddings = embed([same(pixels[i], rng) for i in reference])

    def window(shift: Callable[[np.ndarray, np.random.Generator], Image.Image], novel_share: float) -> np.ndarray:
        taken_novel = int(round(args.window * novel_share))
        picked = rng.choice(rest, args.window - taken_novel, replace=False)
        picked = np.concatenate([picked, rng.choice(novel, taken_novel, replace=False)])
        return embed([shift(pixels[i], rng) for i in picked])

    cases: list[tuple[str, Callable[[np.ndarray, np.random.Generator], Image.Image], float, int]] = [
        ("no shift", same, 0.0, args.calm),
        ("brightness halved", dim, 0.0, args.shifted),
        ("rotated 30 degrees", rotate, 0.0, args.shifted),
        ("20% never-trained class", same, 0.2, args.shifted),
        ("Gaussian noise, sigma 40", noisy, 0.0, args.shifted),
    ]
    rows, seconds = [], []
    for name, shift, share, count in cases:
        aucs, ps = [], []
        for k in range(count):
            embeddings = window(shift, share)
            begun = time.perf_counter()
            scores = drift_scores(reference_embeddings, embeddings, seed=k)
            seconds.append(time.perf_counter() - begun)
            aucs.append(scores.domain_auc)
            ps.append(scores.mmd_p)
        flagged_auc = float(np.mean(np.array(aucs) > settings.drift_auc))
        flagged_mmd = float(np.mean(np.array(ps) < settings.drift_p))
        rows.append((name, count, flagged_auc, flagged_mmd, float(np.median(aucs)), float(np.median(ps))))
        print(
            f"{name}: {count} windows, median AUC {np.median(aucs):.3f}, median MMD p {np.median(ps):.4f}", flush=True
        )

    print(f"\nmedian seconds per window (both tests): {np.median(seconds):.2f}")
    print(f"{'case':<28}{'windows':>8}{'domain classifier':>20}{'MMD':>10}  aim")
    for name, count, auc_rate, mmd_rate, _, _ in rows:
        calm = name == "no shift"
        aim = f"false alarms <= {AIM_FALSE_ALARMS:.0%}" if calm else f"detected >= {AIM_DETECTED:.0%}"

        def verdict(rate: float, calm: bool = calm) -> str:
            ok = rate <= AIM_FALSE_ALARMS if calm else rate >= AIM_DETECTED
            return f"{rate:.0%} {'PASS' if ok else 'MISS'}"

        print(f"{name:<28}{count:>8}{verdict(auc_rate):>20}{verdict(mmd_rate):>10}  {aim}")


if __name__ == "__main__":
    main()
