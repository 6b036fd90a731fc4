"""Box label issues on synthetic scenes, through the service's own ``label_quality`` job for detection projects.

A fixed set of 64 px canvases of 1-3 squares and discs (``tests/shapes.py``, seed 100), ingested into a real SQLite
project and answered by one annotator through the real queue (``next_task``, ``submit_annotation``). 10% of the
training-split images are answered wrongly, one error each, the kinds in turn: a box dropped (``overlooked``), a
box's class swapped (``swap``), a box shifted by half its width (``badloc``). Then ``run_box_label_quality`` (K-fold
detectors with the project's recipe, cleanlab's ObjectLab; ``score_below=1`` ranks every training image) and the
stored list (``list_issues``) are read back.

Scored at N = the true number of spoilt images: the top N of the ranking, per kind precision (of the top-N issues
given that kind, the share spoilt that way) and recall (of the images spoilt that way, the share in the top N with
that kind), and precision@N whatever the kind. Baselines in the same run, on out-of-sample detections the bench
trains itself with the same recipe and folds (the job keeps its own): ``tide`` ranks images by 1 - F1 of the
detections against the given boxes and names the kind by the service's TIDE error analysis (a false box:
overlooked, a wrong class: swap, a poorly located or missed box: badloc); ``random`` is a random order with a random
kind (100 shuffles). The same cleanlab ranking on the bench's detections is shown too (``cleanlab (bench)``).

Aims (none in the issue; set before the first run): the job's precision and recall >= 0.5 for every kind, and its
precision@N at least the ``tide`` baseline's.

Measured at the defaults (one run each, shared 2-core machine, load average 7-10): N = 20 of 201 training images
(7 overlooked, 7 swap, 6 badloc). With ObjectLab at its own 0.95 threshold the job's precision@N was 0.40 (overlooked
P 0.00 R 0.00, swap P 1.00 R 0.14, badloc P 0.32 R 1.00) against the tide baseline's 0.75: calibrated against the
given boxes (errors included), the detector's sure boxes read 0.9-0.95, so ObjectLab saw almost no overlooked or
swapped box. With ``SURE`` (0.8, ``flywheel/training/box_issues.py``): the job's precision@N 0.75 (overlooked P 1.00
R 0.86, swap P 0.55 R 0.86, badloc P 0.67 R 0.33), the tide baseline 0.75 (overlooked 0.60 / 0.43, swap 1.00 / 0.86,
badloc 0.67 / 1.00), random 0.10; job 602 s. The precision@N aim is met (a tie); the per-kind aim is missed on badloc
recall: some shifted boxes are named swap. ``--seed 1`` (N = 18): the job 0.83 (overlooked 1.00 / 0.83, swap 0.62 /
0.83, badloc 1.00 / 0.83) against tide 0.67; ``--seed 2``: 0.78 (1.00 / 0.83, 0.60 / 1.00, 1.00 / 0.50) against tide
0.78; both aims met in both. Swap is the job's weakest kind in precision (0.55-0.62 against tide's 0.80-1.00): clean
boxes of small shapes whose other class the detector also scores high read as swapped.

Run ``.venv/bin/python bench/detection_label_quality.py`` (``--images 240 --folds 3 --epochs 8``); ``--quick``: 120
images, 5 epochs (a smoke run). One thread; timings on the shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from annotation.annotations import submit_annotation
from annotation.box_answers import DrawnBox
from annotation.label_issues import ISSUE_TYPES, list_issues
from annotation.queue import next_task
from flywheel.serving.detection import Detections
from flywheel.training.box_issues import find_box_issues
from flywheel.training.box_label_quality import cross_validated_detections, run_box_label_quality
from flywheel.training.detection_eval import image_errors, image_f1
from flywheel.training.detection_fit import BoxTargets
from flywheel.training.training_job import train_config
from storage.blobs import blob_store_from_settings
from storage.db import Database
from storage.ingest import Limits, ingest_uploads
from storage.migrate import upgrade
from storage.models import Image, Project, Role, Split, TaskType
from storage.projects import add_member, create_project, project_settings
from storage.settings import load_settings
from storage.users import Principal, create_user
from tests.shapes import SHAPE_LABELS, scenes

SIDE, SPOILT_SHARE = 64, 0.10
AIM_PRECISION = AIM_RECALL = 0.5


def spoil(boxes: list[dict], kind: str, rng: np.random.Generator) -> list[dict]:
    """The answer with one error of ``kind``: a box dropped, a class swapped, or a box shifted by half its width."""
    j = int(rng.integers(len(boxes)))
    box = boxes[j]
    if kind == "overlooked":
        return boxes[:j] + boxes[j + 1 :]
    if kind == "swap":
        return [*boxes[:j], {**box, "label": "disc" if box["label"] == "square" else "square"}, *boxes[j + 1 :]]
    step = box["w"] / 2 if box["x"] + 1.5 * box["w"] <= SIDE else -box["w"] / 2
    return [*boxes[:j], {**box, "x": box["x"] + step}, *boxes[j + 1 :]]


def corners(boxes: list[dict]) -> BoxTargets:
    return BoxTargets(
        np.array([[b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]] for b in boxes], np.float32).reshape(-1, 4),
        np.array([SHAPE_LABELS.index(b["label"]) for b in boxes], np.int64),
    )


def scores_at_n(ranked: list[tuple[int, str]], truth: dict[int, str]) -> dict[str, tuple[float, float]]:
    """Per kind (precision, recall) of the top N = len(truth) of ``ranked`` (image, kind); "any": precision@N."""
    top = ranked[: len(truth)]
    out = {"any": (sum(i in truth for i, _ in top) / max(len(top), 1), float("nan"))}
    for kind in ISSUE_TYPES:
        said = [i for i, k in top if k == kind]
        hits = sum(truth.get(i) == kind for i in said)
        real = sum(k == kind for k in truth.values())
        out[kind] = (hits / len(said) if said else 0.0, hits / max(real, 1))
    return out


def tide_ranking(given: dict[int, BoxTargets], found: dict[int, Detections]) -> list[tuple[int, str]]:
    kinds = {"false_boxes": "overlooked", "wrong_class": "swap", "poor_localization": "badloc", "missed": "badloc"}
    rows = []
    for image_id, target in given.items():
        errors = image_errors(target, found[image_id])
        worst = max(kinds, key=lambda e: errors[e])
        rows.append((image_f1(target, found[image_id]), -sum(errors.values()), image_id, kinds[worst]))
    return [(image_id, kind) for _, _, image_id, kind in sorted(rows)]


def random_scores(ids: list[int], truth: dict[int, str], *, seed: int) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(100):
        order = rng.permutation(ids).tolist()
        runs.append(scores_at_n([(i, ISSUE_TYPES[int(rng.integers(3))]) for i in order], truth))
    return {key: tuple(float(np.mean([r[key][m] for r in runs])) for m in (0, 1)) for key in runs[0]}  # type: ignore[misc]


def line(name: str, figures: dict[str, tuple[float, float]]) -> str:
    kinds = "  ".join(f"{k} P {figures[k][0]:.2f} R {figures[k][1]:.2f}" for k in ISSUE_TYPES)
    return f"{name:16s} precision@N {figures['any'][0]:.2f}   {kinds}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--epoch-images", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="120 images, 5 epochs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.epochs = 120, 5
    training = {"epochs": args.epochs, "min_epoch_images": args.epoch_images, "batch_size": 16, "auto_train": False}

    with tempfile.TemporaryDirectory(prefix="bench-box-issues-") as tmp:
        root = Path(tmp)
        settings = load_settings(data_dir=root / "data")
        url = f"sqlite:///{root / 'labelwheel.db'}"
        upgrade(url)
        db, blobs = Database(url), blob_store_from_settings(settings)
        with db.session() as session:
            project = create_project(
                session,
                name="box-issues",
                labels=SHAPE_LABELS,
                task_type=TaskType.detection,
                settings={"overlap_rate": 0.0, "gold_rate": 0.0, "training": training},
            )
            session.flush()
            project_id = project.id
            user, _ = create_user(session, name="labeler", role=Role.annotator)
            add_member(session, project=project, user_id=user.id)
            labeler = Principal(user.id, user.name, user.role)
        drawn = scenes(args.images, seed=100 + args.seed, side=SIDE)
        results = ingest_uploads(
            db=db,
            blobs=blobs,
            limits=Limits.from_settings(settings),
            project_id=project_id,
            uploads=[(f"{i}.png", io.BytesIO(png)) for i, (png, _) in enumerate(drawn)],
        )
        true_boxes = {r.image_id: boxes for r, (_, boxes) in zip(results, drawn, strict=True)}
        pixels = {r.image_id: png for r, (png, _) in zip(results, drawn, strict=True)}
        with db.read_session() as session:
            train_ids = sorted(
                session.scalars(select(Image.id).where(Image.project_id == project_id, Image.split == Split.train))
            )
        rng = np.random.default_rng(args.seed)
        chosen = rng.choice(train_ids, round(SPOILT_SHARE * len(train_ids)), replace=False).tolist()
        truth = {int(i): ISSUE_TYPES[n % 3] for n, i in enumerate(chosen)}
        given: dict[int, list[dict]] = {}
        while True:
            with db.session() as session:
                project = session.get_one(Project, project_id)
                task = next_task(session, principal=labeler, project=project)
                if task is None:
                    break
                image_id = task.image.id
                boxes = true_boxes[image_id]
                if image_id in truth:
                    boxes = spoil(boxes, truth[image_id], rng)
                given[image_id] = boxes
                submit_annotation(
                    session, principal=labeler, project=project, image_id=image_id, boxes=[DrawnBox(**b) for b in boxes]
                )

        started = time.perf_counter()
        summary = run_box_label_quality(db, blobs, project_id, folds=args.folds, epochs=args.epochs, score_below=1.0)
        job_seconds = time.perf_counter() - started
        with db.read_session() as session:
            issues = [
                issue for issue, _, _ in list_issues(session, project_id=project_id, after_rank=None, limit=10**6)
            ]
            recipe = project_settings(session.get_one(Project, project_id)).training
        db.dispose()

        job = scores_at_n([(i.image_id, i.issue_type or "") for i in issues], truth)
        flagged = summary["flagged"]
        flagged_hits = sum(i.image_id in truth for i in issues[:flagged])

        # The baselines' out-of-sample detections: the same recipe and folds, trained here.
        ids = [i for i in train_ids if i in given]
        arrays = np.stack([np.asarray(PILImage.open(io.BytesIO(pixels[i])).convert("RGB")) for i in ids])
        targets = [corners(given[i]) for i in ids]
        config = replace(train_config(recipe, architecture="centernet_small", threads=1), pretrained_weights=None)
        found = cross_validated_detections(arrays, targets, num_classes=2, folds=args.folds, config=config)
        bench_issues = find_box_issues(
            [t.boxes for t in targets], [t.classes for t in targets], found, num_classes=2, score_below=1.0
        )
        bench_cleanlab = scores_at_n([(ids[i.index], i.issue_type) for i in bench_issues], truth)
        tide = scores_at_n(
            tide_ranking(dict(zip(ids, targets, strict=True)), dict(zip(ids, found, strict=True))), truth
        )
        rand = random_scores(ids, truth, seed=args.seed)

    counts = {k: sum(v == k for v in truth.values()) for k in ISSUE_TYPES}
    print(
        f"{args.images} canvases of {SIDE} px, {summary['images']} training images answered, N = {len(truth)} spoilt "
        f"({', '.join(f'{v} {k}' for k, v in counts.items())}); {args.folds} folds x {args.epochs} epochs of "
        f"{args.epoch_images} images, 1 thread; job {job_seconds:.0f} s"
    )
    print(f"cleanlab's find_label_issues flagged {flagged} images, {flagged_hits} of them spoilt")
    for name, figures in (
        ("job (cleanlab)", job),
        ("cleanlab (bench)", bench_cleanlab),
        ("tide", tide),
        ("random", rand),
    ):
        print(line(name, figures))
    met_kinds = all(job[k][0] >= AIM_PRECISION and job[k][1] >= AIM_RECALL for k in ISSUE_TYPES)
    print(f"{'PASS' if met_kinds else 'FAIL'}: the job's precision and recall >= {AIM_PRECISION} for every kind at N")
    beat = job["any"][0] >= tide["any"][0]
    print(
        f"{'PASS' if beat else 'FAIL'}: the job's precision@N {job['any'][0]:.2f} >= the tide baseline's "
        f"{tide['any'][0]:.2f} (random {rand['any'][0]:.2f})"
    )


if __name__ == "__main__":
    main()
