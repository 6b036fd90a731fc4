"""Annotator scorecards: how much, how fast and how well each annotator labels, and flags with evidence.

A label is *checked* when something independent says what it should have been: the gold answer, or
the consensus of an image that someone else labeled too. Flags read checked labels only, so they
can be raised early, after about 20 gold answers or 50 overlapped labels, and each carries the
counts behind it. A single skill number hides a class-specific confuser (someone who labels every 7
as 1 is right on 90% of digits), so ``systematic_confusion`` reads the per-class counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from annotation.consensus import Consensus, Method, compute_consensus
from annotation.crowd import load_crowd
from storage.models import Annotation, AnnotatorExclusion, Assignment, Membership, Project, User

MIN_GOLD, MIN_OVERLAPPED = 20, 50  # evidence before any flag: either alone is enough, or a mix of both
RANDOM_KAPPA = 0.2  # chance-corrected agreement below this: answers carry next to no information
UNRELIABLE_GAP = 0.15  # this far below the other annotators' median accuracy, and surely below it
CONFUSION_RATE, CONFUSION_MIN_ITEMS = 0.5, 5  # answers l for true k at least this often, on this many k
CROWD_CONFUSION_RATE = 0.25  # ...while the others do so less often than this (an ambiguous pair is not a habit)
# ...and more often than chance allows: a binomial test against the others' rate (at least this floor, since
# the consensus itself is sometimes wrong), Bonferroni-corrected for the K(K-1) pairs that could be flagged.
CONFUSION_BASE_FLOOR, CONFUSION_ALPHA = 0.05, 0.01
BREAK_SECONDS = 600  # a longer gap between two submissions is a pause, not labeling time


@dataclass(frozen=True)
class Flag:
    flag: str  # unreliable, random, systematic_confusion
    evidence: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Speed:
    median_seconds: float | None
    source: str | None  # "lease" (task served to label submitted) or "between_submissions"
    samples: int


@dataclass(frozen=True)
class Exclusion:
    reason: str
    excluded_by_id: int | None
    excluded_at: datetime


@dataclass(frozen=True)
class Scorecard:
    annotator_id: int
    name: str
    member: bool
    exclusion: Exclusion | None
    labels: int
    speed: Speed
    gold_answered: int
    gold_correct: int
    overlapped_labels: int
    agreement_with_consensus: float | None
    checked_labels: int
    checked_accuracy: float | None
    kappa: float | None  # checked accuracy corrected for chance
    estimated_accuracy: float | None  # Dawid-Skene
    confusion: list[list[float]] | None  # Dawid-Skene: [true class][answer]
    flags: list[Flag]

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_answered if self.gold_answered else None


@dataclass(frozen=True)
class Scorecards:
    method: Method
    reason: str | None  # why consensus fell back to majority vote
    labels: list[str]
    crowd_accuracy: float | None  # median checked accuracy of annotators with enough evidence
    annotators: list[Scorecard]


@dataclass
class _Checked:
    """One annotator's checked labels: the answer given and the reference answer, as class indices."""

    given: np.ndarray
    reference: np.ndarray
    gold_answered: int
    gold_correct: int
    overlapped: int
    overlapped_agree: int

    @property
    def enough(self) -> bool:
        return self.gold_answered / MIN_GOLD + self.overlapped / MIN_OVERLAPPED >= 1

    @property
    def hits(self) -> int:
        return int((self.given == self.reference).sum())

    @property
    def accuracy(self) -> float | None:
        return self.hits / len(self.given) if len(self.given) else None

    def chance(self, n_classes: int) -> float:
        """Agreement expected if the answers were independent of the reference, given both distributions."""
        own = np.bincount(self.given, minlength=n_classes) / len(self.given)
        reference = np.bincount(self.reference, minlength=n_classes) / len(self.reference)
        return float(own @ reference)

    def kappa(self, n_classes: int) -> float | None:
        """Accuracy corrected for chance (Cohen's kappa against the reference); None when undefined."""
        if not len(self.given):
            return None
        chance = self.chance(n_classes)
        return (self.hits / len(self.given) - chance) / (1 - chance) if chance < 1 else None


def _checked(consensus: Consensus) -> list[_Checked]:
    crowd = consensus.crowd
    usable_per_item = np.bincount(crowd.item[crowd.usable], minlength=crowd.n_items)
    others = usable_per_item[crowd.item] - crowd.usable  # usable labels on the same item besides this one
    gold = crowd.gold[crowd.item]
    on_gold = gold >= 0
    on_overlap = ~on_gold & (others >= 1) & (consensus.label[crowd.item] >= 0)
    reference = np.where(on_gold, gold, consensus.label[crowd.item])
    result = []
    for w in range(crowd.n_workers):
        mine = crowd.worker == w
        checked = mine & (on_gold | on_overlap)
        right = crowd.label == reference
        result.append(
            _Checked(
                given=crowd.label[checked],
                reference=reference[checked],
                gold_answered=int((mine & on_gold).sum()),
                gold_correct=int((mine & on_gold & right).sum()),
                overlapped=int((mine & on_overlap).sum()),
                overlapped_agree=int((mine & on_overlap & right).sum()),
            )
        )
    return result


def _flags(
    w: int, checked: list[_Checked], consensus: Consensus, eligible: np.ndarray, labels: list[str]
) -> list[Flag]:
    mine = checked[w]
    if not mine.enough:
        return []
    n, hits, accuracy = len(mine.given), mine.hits, mine.hits / len(mine.given)
    chance, kappa = mine.chance(len(labels)), mine.kappa(len(labels))
    if kappa is not None and kappa < RANDOM_KAPPA:
        random = Flag(
            "random",
            f"agrees with the consensus or gold answer on {hits} of {n} checked labels ({accuracy:.0%}); "
            f"chance alone gives {chance:.0%} (kappa {kappa:.2f})",
            {"checked": n, "agreed": hits, "accuracy": accuracy, "chance": chance, "kappa": kappa},
        )
        return [random, *_unreliable(mine, w, checked, eligible, confused=set())]
    confusions = _confusions(w, checked, consensus, eligible, labels)
    # A habit on one class explains the errors it causes: reliability is judged on the other classes.
    confused = {labels.index(f.details["true_label"]) for f in confusions}
    return [*_unreliable(mine, w, checked, eligible, confused=confused), *confusions]


def _unreliable(
    mine: _Checked, w: int, checked: list[_Checked], eligible: np.ndarray, confused: set[int]
) -> list[Flag]:
    others = [a for o in np.flatnonzero(eligible) if o != w and (a := checked[o].accuracy) is not None]
    keep = ~np.isin(mine.reference, sorted(confused))
    n = int(keep.sum())
    if not others or n == 0:
        return []
    crowd = float(np.median(others))
    hits = int((mine.given[keep] == mine.reference[keep]).sum())
    from statsmodels.stats.proportion import (
        proportion_confint,  # imported here: seconds that the API's start need not pay
    )

    accuracy, upper = hits / n, float(proportion_confint(hits, n, alpha=0.05, method="wilson")[1])
    if accuracy >= crowd - UNRELIABLE_GAP or upper >= crowd:
        return []
    scope = " outside the confused classes" if confused else ""
    return [
        Flag(
            "unreliable",
            f"agrees with the consensus or gold answer on {accuracy:.0%} of {n} checked labels{scope}; "
            f"the other annotators' median is {crowd:.0%}",
            {"checked": n, "accuracy": accuracy, "upper_95": upper, "crowd_median": crowd},
        )
    ]


def _confusion_counts(items: Iterable[_Checked], n_classes: int) -> np.ndarray:
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    for c in items:
        np.add.at(counts, (c.reference, c.given), 1)
    return counts


def _confusions(
    w: int, checked: list[_Checked], consensus: Consensus, eligible: np.ndarray, labels: list[str]
) -> list[Flag]:
    k_classes = len(labels)
    own = _confusion_counts([checked[w]], k_classes)
    crowd = _confusion_counts((checked[o] for o in np.flatnonzero(eligible) if o != w), k_classes)
    estimated = consensus.confusion
    pairs = k_classes * (k_classes - 1)
    flags = []
    for k in range(k_classes):
        total = int(own[k].sum())
        if total < CONFUSION_MIN_ITEMS:
            continue
        wrong = own[k].copy()
        wrong[k] = 0
        answer = int(wrong.argmax())
        rate = wrong[answer] / total
        others_total = int(crowd[k].sum())
        others_rate = crowd[k, answer] / others_total if others_total else 0.0
        if rate < CONFUSION_RATE or others_rate >= CROWD_CONFUSION_RATE:
            continue
        base = max(others_rate, CONFUSION_BASE_FLOOR)
        from scipy.stats import binomtest  # imported here: seconds that the API's start need not pay

        p_value = min(1.0, binomtest(int(wrong[answer]), total, base, alternative="greater").pvalue * pairs)
        if p_value >= CONFUSION_ALPHA:
            continue
        evidence = (
            f"labels {labels[k]} as {labels[answer]} in {rate:.0%} of cases ({wrong[answer]} of {total} checked "
            f"images whose answer is {labels[k]}); the other annotators do so in {others_rate:.0%}"
        )
        details: dict[str, Any] = {
            "true_label": labels[k],
            "given_label": labels[answer],
            "rate": float(rate),
            "count": int(wrong[answer]),
            "of": total,
            "others_rate": float(others_rate),
            "p_value": float(p_value),
        }
        if estimated is not None:
            details["estimated_rate"] = estimate = float(estimated[w, k, answer])
            evidence += f"; Dawid-Skene estimates P({labels[answer]} | true {labels[k]}) = {estimate:.2f}"
        flags.append(Flag("systematic_confusion", evidence, details))
    return flags


def _speeds(session: Session, *, project_id: int) -> dict[int, Speed]:
    """Median seconds per label: from the task being served to the label, else between submissions."""
    rows = session.execute(
        select(Annotation.annotator_id, Annotation.created_at, Assignment.leased_at)
        .outerjoin(
            Assignment,
            and_(Assignment.image_id == Annotation.image_id, Assignment.annotator_id == Annotation.annotator_id),
        )
        .where(Annotation.project_id == project_id, Annotation.supersedes_id.is_(None))
        .order_by(Annotation.annotator_id, Annotation.created_at)
    ).all()
    by_annotator: dict[int, list[tuple[datetime, datetime | None]]] = {}
    for annotator_id, created_at, leased_at in rows:
        by_annotator.setdefault(annotator_id, []).append((created_at, leased_at))
    speeds = {}
    for annotator_id, labels in by_annotator.items():
        leased = [(c - s).total_seconds() for c, s in labels if s is not None and c >= s]
        if leased:
            speeds[annotator_id] = Speed(float(np.median(leased)), "lease", len(leased))
            continue
        times = [c for c, _ in labels]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        gaps = [g for g in gaps if 0 < g <= BREAK_SECONDS]
        speeds[annotator_id] = (
            Speed(float(np.median(gaps)), "between_submissions", len(gaps)) if gaps else Speed(None, None, 0)
        )
    return speeds


@dataclass(frozen=True)
class People:
    """Who the annotators of a scorecard are: names, membership, exclusions, speed."""

    names: dict[int, str]
    members: set[int]
    exclusions: dict[int, Exclusion]
    speeds: dict[int, Speed]

    def name(self, annotator_id: int) -> str:
        return self.names.get(annotator_id, f"user {annotator_id}")

    def speed(self, annotator_id: int) -> Speed:
        return self.speeds.get(annotator_id, Speed(None, None, 0))


def who(session: Session, *, project_id: int, ids: list[int]) -> People:
    """The annotators' names, memberships, live exclusions and labeling speeds, for either kind of scorecard."""
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())
    members = set(
        session.scalars(
            select(Membership.user_id).where(Membership.project_id == project_id, Membership.user_id.in_(ids))
        )
    )
    exclusions = {
        e.annotator_id: Exclusion(e.reason, e.excluded_by_id, e.created_at)
        for e in session.scalars(
            select(AnnotatorExclusion).where(
                AnnotatorExclusion.project_id == project_id, AnnotatorExclusion.revoked_at.is_(None)
            )
        )
    }
    return People(names, members, exclusions, _speeds(session, project_id=project_id))


def annotator_scorecards(session: Session, *, project: Project) -> Scorecards:
    """Every annotator with a current label in the project, removed and excluded ones included."""
    crowd = load_crowd(session, project=project)
    consensus = compute_consensus(crowd)
    checked = _checked(consensus)
    eligible = np.array([c.enough for c in checked], dtype=bool) & ~crowd.excluded
    ids = [int(a) for a in crowd.annotator_ids]
    people = who(session, project_id=project.id, ids=ids)
    confusion, estimated = consensus.confusion, consensus.accuracy()
    # An excluded annotator whose every image lacks anyone else's label cannot be measured at all.
    measured = consensus.counts.sum(axis=(1, 2)) > 0 if consensus.counts is not None else np.zeros(crowd.n_workers)
    counts = np.bincount(crowd.worker, minlength=crowd.n_workers)
    cards = []
    for w, annotator_id in enumerate(ids):
        mine = checked[w]
        cards.append(
            Scorecard(
                annotator_id=annotator_id,
                name=people.name(annotator_id),
                member=annotator_id in people.members,
                exclusion=people.exclusions.get(annotator_id),
                labels=int(counts[w]),
                speed=people.speed(annotator_id),
                gold_answered=mine.gold_answered,
                gold_correct=mine.gold_correct,
                overlapped_labels=mine.overlapped,
                agreement_with_consensus=mine.overlapped_agree / mine.overlapped if mine.overlapped else None,
                checked_labels=len(mine.given),
                checked_accuracy=mine.accuracy,
                kappa=mine.kappa(crowd.n_classes),
                estimated_accuracy=float(estimated[w]) if estimated is not None and measured[w] else None,
                confusion=confusion[w].tolist() if confusion is not None and measured[w] else None,
                flags=_flags(w, checked, consensus, eligible, crowd.labels),
            )
        )
    accuracies = [checked[w].accuracy for w in np.flatnonzero(eligible)]
    return Scorecards(
        method=consensus.method,
        reason=consensus.reason,
        labels=crowd.labels,
        crowd_accuracy=float(np.median([a for a in accuracies if a is not None])) if accuracies else None,
        annotators=cards,
    )
