"""Label quality on scikit-learn's digits with a simulated crowd, driving the service's own functions.

Everything runs in-process on a real SQLite database (and a local blob store for part 2):

1. Consensus and flags. ``--items`` images (default 5,000, true labels drawn from the digits'
   labels) each get three labels from seven annotators: accuracies 0.95, 0.92, 0.90, 0.85 and
   0.70, a uniform-random spammer, and one who labels every 7 as 1 (right otherwise with 0.95).
   Annotators take turns through the real queue (``next_task`` and ``submit_annotation``). Every
   10 labels per annotator the scorecards are computed (``annotator_scorecards``) and the first
   appearance of each flag is recorded with the annotator's label count at that moment. Then:
   majority vote (the labels as submitted, no fit yet) and Dawid-Skene (``update_project_consensus``)
   against the truth, overall and on the true 7s, with crowd-kit's ``DawidSkene`` on the same
   labels as the reference, and the spammer's pairwise Cohen's kappa from the agreement report.
2. Label issues. The 1,797 digits are stored as PNGs, one annotator labels them all with 10% of
   the labels flipped at random, and ``run_label_quality`` (5-fold cross-validation of the
   service's CNN on the training snapshot, cleanlab's ``prune_by_class``) ranks the issues:
   precision, recall and F1 against the flipped training images.

Targets (../shared/design/TARGETS.md): Dawid-Skene at least crowd-kit's on the same crowd and at
least majority vote + 0.03; spammer and confuser flagged with the right evidence within their first
150 labels; label-issue F1 >= 0.92. Medians over ``--seeds`` crowds (part 1) and ``--issue-seeds``
(part 2).

Run ``.venv/bin/python bench/label_quality.py`` (``--items``, ``--seeds``, ``--issue-seeds``,
``--folds``, ``--epochs``, ``--threads``, ``--skip-issues``).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from _rows import image_row
from crowdkit.aggregation import DawidSkene
from PIL import Image as PILImage
from sklearn.datasets import load_digits
from sqlalchemy import insert, select

from annotation.annotations import submit_annotation
from annotation.consensus import update_project_consensus
from annotation.label_issues import list_issues
from annotation.queue import next_task
from annotation.reports import agreement_report
from annotation.scorecards import annotator_scorecards
from flywheel.training.label_quality import run_label_quality
from storage.blobs import blob_store_from_settings
from storage.db import Database
from storage.ingest import Limits, ingest_uploads, split_for
from storage.migrate import upgrade
from storage.models import Annotation, Image, Project, QueueTier, Role, Split
from storage.projects import add_member, create_project
from storage.settings import load_settings
from storage.users import Principal, create_user

LABELS = [str(d) for d in range(10)]
CROWD = (
    ("a95", 0.95),
    ("a92", 0.92),
    ("a90", 0.90),
    ("a85", 0.85),
    ("a70", 0.70),
    ("spammer", "spammer"),
    ("seven-as-one", "seven-as-one"),
)
CHECK_EVERY = 10  # labels per annotator between two scorecard checks
CHECK_UNTIL = 400  # stop checking once every annotator has this many labels
FLIP_SHARE = 0.10
TARGET_DS_GAIN, TARGET_FLAG_LABELS, TARGET_F1 = 0.03, 150, 0.92


def answer(kind: float | str, truth: int, rng: np.random.Generator) -> int:
    if kind == "spammer":
        return int(rng.integers(10))
    if kind == "seven-as-one":
        if truth == 7:
            return 1
        kind = 0.95
    if rng.random() < float(kind):
        return truth
    return int(rng.choice([c for c in range(10) if c != truth]))


@dataclass
class CrowdRun:
    majority: float
    dawid_skene: float
    crowdkit: float
    majority_sevens: float
    dawid_skene_sevens: float
    crowdkit_sevens: float
    confuser_p_1_given_7: float
    skills: dict[str, tuple[float, float]]  # annotator -> (Dawid-Skene's estimate, their actual accuracy)
    spammer_kappa: float
    first_flags: dict[str, dict[str, int]] = field(default_factory=dict)  # annotator -> flag -> labels
    evidence: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _database(root: Path) -> tuple[Database, str]:
    url = f"sqlite:///{root / 'labelwheel.db'}"
    upgrade(url)
    return Database(url), url


def _crowd_project(db: Database, *, items: int, seed: int) -> tuple[int, list[Principal], dict[int, int]]:
    rng = np.random.default_rng(seed)
    truth_pool = load_digits().target
    with db.session() as session:
        project = create_project(
            session,
            name=f"crowd-{seed}",
            labels=LABELS,
            settings={"overlap_rate": 1.0, "overlap_k": 3, "gold_rate": 0.0, "auto_review": False},
        )
        session.flush()
        principals = []
        for name, _ in CROWD:
            user, _ = create_user(session, name=f"{name}-{seed}", role=Role.annotator)
            add_member(session, project=project, user_id=user.id)
            principals.append(Principal(user.id, user.name, user.role))
        shas = [f"{seed:08x}{i:056x}" for i in range(items)]
        rows = [
            image_row(
                project.id,
                sha,
                split=split_for(sha),
                labels_needed=3,
                queue_tier=int(QueueTier.fresh),
                priority=float(rng.random()),
                original_name=f"{i}.png",
            )
            for i, sha in enumerate(shas)
        ]
        session.execute(insert(Image), rows)
        ids = dict(session.execute(select(Image.sha256, Image.id).where(Image.project_id == project.id)).all())
        truth = {ids[sha]: int(rng.choice(truth_pool)) for sha in shas}
        return project.id, principals, truth


def _record_flags(db: Database, project_id: int, run: CrowdRun, names: dict[str, str]) -> None:
    with db.read_session() as session:
        cards = annotator_scorecards(session, project=session.get_one(Project, project_id))
    for card in cards.annotators:
        seen = run.first_flags.setdefault(names[card.name], {})
        for flag in card.flags:
            if flag.flag not in seen:
                seen[flag.flag] = card.labels
                run.evidence[f"{names[card.name]} {flag.flag}"] = flag.evidence


def crowd_run(root: Path, *, items: int, seed: int) -> CrowdRun:
    started = time.perf_counter()
    db, _ = _database(root)
    project_id, principals, truth = _crowd_project(db, items=items, seed=seed)
    names = {p.name: name for p, (name, _) in zip(principals, CROWD, strict=True)}
    rng = np.random.default_rng(seed + 1000)
    active = list(range(len(principals)))
    given = [0] * len(principals)
    run = CrowdRun(0, 0, 0, 0, 0, 0, 0, {}, 0)
    while active:
        w = active[int(rng.integers(len(active)))]
        principal, (_, kind) = principals[w], CROWD[w]
        with db.session() as session:
            project = session.get_one(Project, project_id)
            task = next_task(session, principal=principal, project=project)
            if task is None:
                active.remove(w)
                continue
            label = answer(kind, truth[task.image.id], rng)
            submit_annotation(session, principal=principal, project=project, image_id=task.image.id, label=str(label))
        given[w] += 1
        if min(given) <= CHECK_UNTIL and sum(given) % (CHECK_EVERY * len(principals)) == 0:
            _record_flags(db, project_id, run, names)
    _record_flags(db, project_id, run, names)

    true = np.array([truth[i] for i in sorted(truth)])
    sevens = true == 7
    with db.session() as session:
        majority = _labels(session, project_id)
        summary = update_project_consensus(session, project_id)
    assert summary.method == "dawid_skene", summary
    with db.read_session() as session:
        dawid_skene = _labels(session, project_id)
        annotations = session.execute(
            select(Annotation.image_id, Annotation.annotator_id, Annotation.label).where(
                Annotation.project_id == project_id, Annotation.is_current
            )
        ).all()
        project = session.get_one(Project, project_id)
        cards = {names[c.name]: c for c in annotator_scorecards(session, project=project).annotators}
        report = agreement_report(session, project=project)
    frame = pd.DataFrame(annotations, columns=["task", "worker", "label"])
    reference = DawidSkene(n_iter=100).fit_predict(frame).sort_index()
    crowdkit = np.array([int(reference[i]) for i in sorted(truth)])
    actual: dict[int, list[bool]] = {}
    for image_id, annotator_id, label in annotations:
        actual.setdefault(annotator_id, []).append(int(label) == truth[image_id])
    spammer_id = principals[5].id
    spammer_pairs = [
        p.cohen_kappa.value
        for p in report.agreement.pairs
        if spammer_id in (report.annotators[p.first], report.annotators[p.second]) and p.cohen_kappa.value is not None
    ]
    confusion = cards["seven-as-one"].confusion
    assert confusion is not None
    run.majority, run.dawid_skene, run.crowdkit = (float((x == true).mean()) for x in (majority, dawid_skene, crowdkit))
    run.majority_sevens, run.dawid_skene_sevens, run.crowdkit_sevens = (
        float((x[sevens] == 7).mean()) for x in (majority, dawid_skene, crowdkit)
    )
    run.confuser_p_1_given_7 = confusion[7][1]
    run.skills = {
        name: (float(cards[name].estimated_accuracy or 0.0), float(np.mean(actual[p.id])))
        for p, (name, _) in zip(principals, CROWD, strict=True)
    }
    run.spammer_kappa = float(statistics.median(spammer_pairs))
    run.seconds = time.perf_counter() - started
    db.dispose()
    return run


def _labels(session, project_id: int) -> np.ndarray:
    rows = session.execute(
        select(Image.id, Image.consensus_label).where(Image.project_id == project_id).order_by(Image.id)
    ).all()
    return np.array([int(label) if label is not None else -1 for _, label in rows])


def _digit_pngs() -> tuple[list[bytes], np.ndarray]:
    data = load_digits()
    pngs, labels, seen = [], [], set()
    for pixels, label in zip(data.images, data.target, strict=True):
        out = io.BytesIO()
        PILImage.fromarray((pixels * 16).clip(0, 255).astype(np.uint8), mode="L").save(out, format="PNG")
        if out.getvalue() not in seen:  # identical files are one image in the store
            seen.add(out.getvalue())
            pngs.append(out.getvalue())
            labels.append(int(label))
    return pngs, np.array(labels)


@dataclass
class IssueRun:
    precision: float
    recall: float
    f1: float
    flipped: int
    flagged: int
    images: int
    cv_accuracy: float
    epochs: int
    seconds: float


def issue_run(root: Path, *, seed: int, folds: int, epochs: int | None, threads: int) -> IssueRun:
    settings = load_settings(data_dir=root / "data")
    db, _ = _database(root)
    blobs = blob_store_from_settings(settings)
    pngs, truth = _digit_pngs()
    rng = np.random.default_rng(seed)
    with db.session() as session:
        project = create_project(session, name=f"digits-{seed}", labels=LABELS, settings={"overlap_rate": 0.0})
        session.flush()
        project_id = project.id
        annotator, _ = create_user(session, name=f"labeler-{seed}", role=Role.annotator)
        add_member(session, project=project, user_id=annotator.id)
        labeler = Principal(annotator.id, annotator.name, annotator.role)
    results = ingest_uploads(
        db=db,
        blobs=blobs,
        limits=Limits.from_settings(settings),
        project_id=project_id,
        uploads=[(f"{i}.png", io.BytesIO(png)) for i, png in enumerate(pngs)],
    )
    true_of = {r.image_id: int(truth[i]) for i, r in enumerate(results)}
    flipped = set(rng.choice(sorted(true_of), int(FLIP_SHARE * len(true_of)), replace=False).tolist())
    while True:
        with db.session() as session:
            project = session.get_one(Project, project_id)
            task = next_task(session, principal=labeler, project=project)
            if task is None:
                break
            image_id = task.image.id
            label = true_of[image_id]
            if image_id in flipped:
                label = (label + int(rng.integers(1, 10))) % 10
            submit_annotation(session, principal=labeler, project=project, image_id=image_id, label=str(label))
    summary = run_label_quality(db, blobs, project_id, folds=folds, epochs=epochs, threads=threads)
    with db.read_session() as session:
        train_ids = set(
            session.scalars(select(Image.id).where(Image.project_id == project_id, Image.split == Split.train))
        )
        found = {
            issue.image_id for issue, _, _ in list_issues(session, project_id=project_id, after_rank=None, limit=10**6)
        }
    db.dispose()
    wrong = flipped & train_ids
    hits = len(found & wrong)
    precision, recall = hits / max(len(found), 1), hits / max(len(wrong), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return IssueRun(
        precision,
        recall,
        f1,
        len(wrong),
        len(found),
        summary["images"],
        summary["cross_validated_accuracy"],
        summary["epochs"],
        summary["seconds"],
    )


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarize_crowds(runs: list[CrowdRun]) -> None:
    majority, ds, ck = (median([getattr(r, f) for r in runs]) for f in ("majority", "dawid_skene", "crowdkit"))
    gain = median([r.dawid_skene - r.majority for r in runs])
    ratio = median([r.dawid_skene / r.crowdkit for r in runs])
    flag_at = {
        name: median([r.first_flags.get(name, {}).get(flag, 10**9) for r in runs])
        for name, flag in (("spammer", "random"), ("seven-as-one", "systematic_confusion"))
    }
    print(f"\nmedian over {len(runs)} crowds: majority {majority:.3f}, Dawid-Skene {ds:.3f} (crowd-kit {ck:.3f})")
    print(
        f"  Dawid-Skene - majority {gain:+.3f} ({'PASS' if gain >= TARGET_DS_GAIN else 'MISS'}: >= +{TARGET_DS_GAIN}); "
        f"Dawid-Skene / crowd-kit {ratio:.4f} ({'PASS' if ratio >= 1 - 1e-9 else 'MISS'}: >= 1)"
    )
    late = {name: at for name, at in flag_at.items() if at > TARGET_FLAG_LABELS}
    print(
        f"  spammer flagged random after {flag_at['spammer']:.0f} labels, confuser flagged systematic_confusion "
        f"after {flag_at['seven-as-one']:.0f} ({'PASS' if not late else 'MISS'}: within {TARGET_FLAG_LABELS})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--issue-seeds", type=int, default=1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: the service's own choice")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-issues", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}")

    runs = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
            run = crowd_run(Path(tmp), items=args.items, seed=seed)
        runs.append(run)
        print(
            f"\ncrowd seed {seed} ({args.items} images, 3 labels each, {run.seconds:.0f} s): accuracy vs truth "
            f"majority {run.majority:.3f}, Dawid-Skene {run.dawid_skene:.3f}, crowd-kit DS {run.crowdkit:.3f}; "
            f"on true 7s {run.majority_sevens:.3f} / {run.dawid_skene_sevens:.3f} / {run.crowdkit_sevens:.3f}"
        )
        error = max(abs(estimate - real) for estimate, real in run.skills.values())
        print(
            f"  confuser P(1 | true 7) = {run.confuser_p_1_given_7:.3f}; spammer's median pairwise Cohen's kappa "
            f"{run.spammer_kappa:.3f}; Dawid-Skene's skill estimates within {error:.3f} of the actual accuracies"
        )
        for name, _ in CROWD:
            flags = run.first_flags.get(name, {})
            shown = ", ".join(f"{flag} after {labels} labels" for flag, labels in sorted(flags.items())) or "none"
            estimate, real = run.skills[name]
            print(f"  {name:>13}: skill {estimate:.3f} (actual {real:.3f}); flags: {shown}")
        for key, evidence in sorted(run.evidence.items()):
            print(f"    {key}: {evidence}")

    if runs:
        summarize_crowds(runs)
    if args.skip_issues:
        return
    issues = []
    for seed in range(args.issue_seeds):
        with tempfile.TemporaryDirectory(prefix="bench-issues-") as tmp:
            result = issue_run(Path(tmp), seed=seed, folds=args.folds, epochs=args.epochs, threads=args.threads)
        issues.append(result)
        print(
            f"\nlabel issues seed {seed}: {result.images} training images, {result.flipped} flipped; flagged "
            f"{result.flagged}: precision {result.precision:.3f}, recall {result.recall:.3f}, F1 {result.f1:.3f} "
            f"(cross-validated accuracy {result.cv_accuracy:.3f}, {args.folds} folds x {result.epochs} epochs, "
            f"{result.seconds:.0f} s, {args.threads} thread(s))"
        )
    f1 = median([r.f1 for r in issues])
    print(f"median label-issue F1 {f1:.3f} ({'PASS' if f1 >= TARGET_F1 else 'MISS'}: >= {TARGET_F1})")


if __name__ == "__main__":
    main()
