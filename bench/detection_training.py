"""Full detector training from scratch on synthetic digit scenes, the service's recipe next to a plain reference.

A fixed set of 96 px canvases, each with 1-3 of scikit-learn's handwritten digits (scaled to 16-32 px, no overlap),
boxes tight around the ink; 400 for training and 200 for testing (``--train``). For each seed, one thread:

- ``service``: the flywheel's own ``train_detector`` (``centernet_small``, box-aware augmentation, class weights,
  one-cycle schedule) and its evaluation (``coco_figures``: pycocotools' mAP@.5 and mAP@[.5:.95]);
- ``reference``: a plain script in this file, written apart from the service's code: a centre-point detector of
  six conv layers (stride-4 heatmap per class, size and offset heads, focal loss), Adam at a constant rate, no
  augmentation, the same number of optimizer steps on the same batches' size, decoded with torch's max-pool and
  top-k, scored by the same pycocotools call.

Prints per run mAP@.5, mAP@[.5:.95] and seconds, then medians and the service-minus-reference mAP@.5 (aim: within
0.02 of the reference, and mAP@.5 >= 0.9 within 300 s for the service; ../shared/design/TARGETS.md).

Run ``.venv/bin/python bench/detection_training.py`` (``--seeds 3 --epochs 10``: 320 steps of 32); ``--quick`` is one
seed, fewer images and epochs (a smoke run, not the target's measurement: at 64 steps the service's augmentation
holds it far below the plain script, 0.49 against 0.83 mAP@.5 in one run, 0.83 without augmentation).

One seed at the defaults, on a shared 2-core machine: service mAP@.5 0.961, mAP@[.5:.95] 0.730 in 226 s; reference
0.951, 0.690 in 143 s. Three seeds (the machine far busier, load average 5-16 on 2 cores): service medians 0.957,
0.723 in 447 s (250-764 s); reference 0.944, 0.652 in 550 s; service - reference mAP@.5 +0.013.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from flywheel.serving.detection import Detections
from flywheel.training.detection_eval import coco_figures
from flywheel.training.detection_fit import BoxTargets, predict_boxes, train_detector
from flywheel.training.fit import TrainConfig, to_tensor

SIDE = 96
LABELS = [str(d) for d in range(10)]


def digit_scenes(count: int, *, seed: int) -> tuple[np.ndarray, list[BoxTargets]]:
    """``count`` canvases of 1-3 digits and their boxes (x1, y1, x2, y2 around the ink)."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    images, targets = np.zeros((count, SIDE, SIDE, 3), np.uint8), []
    for n in range(count):
        canvas = rng.integers(0, 40, (SIDE, SIDE), dtype=np.int32)
        boxes, classes = [], []
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(data.target)))
            side = int(rng.integers(16, 33))
            glyph = np.asarray(
                Image.fromarray((data.images[k] * 16).clip(0, 255).astype(np.uint8)).resize((side, side))
            )
            for _attempt in range(30):
                x, y = int(rng.integers(0, SIDE - side)), int(rng.integers(0, SIDE - side))
                if all(x + side <= b[0] or b[2] <= x or y + side <= b[1] or b[3] <= y for b in boxes):
                    break
            else:
                continue
            canvas[y : y + side, x : x + side] = np.maximum(canvas[y : y + side, x : x + side], glyph)
            ys, xs = np.nonzero(glyph > 40)
            boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
            classes.append(int(data.target[k]))
        images[n] = np.repeat(canvas.clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        targets.append(BoxTargets(np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)))
    return images, targets


# --- the plain reference -------------------------------------------------------------------------------


class PlainCenterNet(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()

        def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, dilation, dilation), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *conv(3, 32, 2), *conv(32, 32), *conv(32, 64, 2), *conv(64, 64), *conv(64, 64, 1, 2), *conv(64, 64, 1, 4)
        )
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, out, 1)) for out in (classes, 2, 2)
        )
        nn.init.constant_(self.heads[0][-1].bias, -2.19)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(x)
        return [head(features) for head in self.heads]


def reference_loss(model: PlainCenterNet, x: torch.Tensor, targets: list[BoxTargets]) -> torch.Tensor:
    logits, size, offset = model(x)
    cells = logits.shape[-1]
    heat = torch.zeros_like(logits)
    ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    index, wanted_size, wanted_offset = [], [], []
    for n, t in enumerate(targets):
        for (x1, y1, x2, y2), k in zip(t.boxes / 4, t.classes, strict=True):
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            ix, iy = min(int(cx), cells - 1), min(int(cy), cells - 1)
            sigma_x, sigma_y = max(w / 6, 0.5), max(h / 6, 0.5)
            blob = torch.exp(-((xs - ix) ** 2) / (2 * sigma_x**2) - ((ys - iy) ** 2) / (2 * sigma_y**2))
            heat[n, k] = torch.maximum(heat[n, k], blob)
            index.append((n, iy, ix))
            wanted_size.append((w, h))
            wanted_offset.append((cx - ix, cy - iy))
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1).float()
    focal = -(positive * (1 - p) ** 2 * torch.log(p) + (1 - positive) * (1 - heat) ** 4 * p**2 * torch.log(1 - p))
    loss = focal.sum() / positive.sum().clamp(min=1)
    if index:
        n, iy, ix = torch.tensor(index).T
        loss = loss + 0.1 * F.l1_loss(size[n, :, iy, ix], torch.tensor(wanted_size))
        loss = loss + F.l1_loss(offset[n, :, iy, ix], torch.tensor(wanted_offset))
    return loss


@torch.no_grad()
def reference_detect(model: PlainCenterNet, x: torch.Tensor) -> list[Detections]:
    model.eval()
    logits, size, offset = model(x)
    heat = torch.sigmoid(logits)
    heat = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    out = []
    for h, s, o in zip(heat, size, offset, strict=True):
        scores, flat = h.flatten().topk(100)
        k, cell = flat // (h.shape[1] * h.shape[2]), flat % (h.shape[1] * h.shape[2])
        iy, ix = cell // h.shape[2], cell % h.shape[2]
        cx, cy = (ix + o[0, iy, ix]) * 4, (iy + o[1, iy, ix]) * 4
        w, hh = s[0, iy, ix].clamp(min=0) * 4, s[1, iy, ix].clamp(min=0) * 4
        boxes = torch.stack([cx - w / 2, cy - hh / 2, cx + w / 2, cy + hh / 2], 1)
        out.append(Detections(boxes.double().numpy(), scores.double().numpy(), k.numpy()))
    return out


def train_reference(images: np.ndarray, targets: list[BoxTargets], *, steps: int, batch: int, seed: int):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PlainCenterNet(len(LABELS))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        chosen = rng.choice(len(images), batch, replace=False)
        model.train()
        optimizer.zero_grad()
        reference_loss(model, to_tensor(images[chosen]), [targets[i] for i in chosen]).backward()
        optimizer.step()
    return model


# --- the run ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--epoch-images", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="one seed, 200 images, 4 epochs of 512")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train, args.epochs, args.epoch_images = 1, 200, 4, 512
    torch.set_num_threads(1)
    train_x, train_t = digit_scenes(args.train, seed=1000)
    test_x, test_t = digit_scenes(200, seed=2000)
    batch = 32
    steps = args.epochs * -(-args.epoch_images // batch)
    rows: dict[str, list[tuple[float, float, float]]] = {"service": [], "reference": []}
    for seed in range(args.seeds):
        started = time.perf_counter()
        config = TrainConfig(
            architecture="centernet_small",
            epochs=args.epochs,
            min_epoch_images=args.epoch_images,
            batch_size=batch,
            seed=seed,
            threads=1,
        )
        model = train_detector(config, images=train_x, targets=train_t, num_classes=len(LABELS)).model
        figures = coco_figures(test_t, predict_boxes(model, test_x), labels=LABELS)
        rows["service"].append((figures.map50, figures.map, time.perf_counter() - started))
        started = time.perf_counter()
        plain = train_reference(train_x, train_t, steps=steps, batch=batch, seed=seed)
        found = [
            d
            for start in range(0, len(test_x), 64)
            for d in reference_detect(plain, to_tensor(test_x[start : start + 64]))
        ]
        figures = coco_figures(test_t, found, labels=LABELS)
        rows["reference"].append((figures.map50, figures.map, time.perf_counter() - started))
        for name, runs in rows.items():
            map50, full, seconds = runs[-1]
            print(f"seed {seed} {name:9s}: mAP@.5 {map50:.3f}  mAP@[.5:.95] {full:.3f}  {seconds:6.1f} s")
    median = {name: [statistics.median(r[i] for r in runs) for i in range(3)] for name, runs in rows.items()}
    print(f"\n{args.train} training canvases, 200 test, {steps} steps of {batch}, 1 thread, {args.seeds} seed(s)")
    for name, (map50, full, seconds) in median.items():
        print(f"median {name:9s}: mAP@.5 {map50:.3f}  mAP@[.5:.95] {full:.3f}  {seconds:6.1f} s")
    gap = median["service"][0] - median["reference"][0]
    print(
        f"service - reference mAP@.5: {gap:+.3f} (aim: >= -0.02); service mAP@.5 >= 0.9 within 300 s: "
        f"{median['service'][0] >= 0.9 and median['service'][2] <= 300}"
    )


if __name__ == "__main__":
    main()
