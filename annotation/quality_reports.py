"""The Quality page's reports, stored: agreement figures and annotator scorecards in the API's shape (the schemas in
``service/schemas/quality.py`` validate them on the way out), computed by a ``quality_report`` job and read back
in one row. Refitting Dawid-Skene and every pairwise kappa takes seconds on a large project; a page must not.

A report knows the labels it covers (the newest annotation id it saw), so a reader can tell whether newer labels
exist; changes that add no label (a gold answer, a consensus refit) mark it outdated, and an exclusion is patched
into it at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from annotation.agreement import MIN_SHARED_ITEMS
from annotation.box_scorecards import BoxScorecards, box_scorecards
from annotation.boxes import BoxScorecard
from annotation.reports import BoxAgreementReport, agreement_report, box_agreement_report, human_reference
from annotation.scorecards import MIN_GOLD, MIN_OVERLAPPED, Exclusion, annotator_scorecards
from storage.models import Annotation, Project, QualityReport, TaskType, utcnow

KINDS = ("agreement", "annotators")


@dataclass(frozen=True)
class Freshness:
    """What a stored report covers, and whether it still reads the project as it is now."""

    computed_at: datetime
    labels: int  # current labels when it was computed
    labels_through: int  # the newest annotation id it saw
    newer_labels: bool  # labels arrived since
    outdated: bool  # newer labels, or a change without labels (gold answer, consensus refit) since


def _plain(value: Any) -> Any:
    """JSON's types only: numpy scalars become numbers, datetimes ISO strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _box_agreement(report: BoxAgreementReport, *, labels: list[str]) -> dict[str, Any]:
    ref = {a: {"id": a, "name": report.names.get(a, f"user {a}")} for a in report.annotators}
    return {
        "labels": labels,
        "annotators": list(ref.values()),
        "excluded_annotators": report.excluded_annotators,
        "iou_threshold": report.iou_threshold,
        "images": report.images,
        "reason": report.reason,
        "overall": None if report.overall is None else asdict(report.overall),
        "pairs": [{"annotator_a": ref[a], "annotator_b": ref[b], **asdict(figures)} for a, b, figures in report.pairs],
    }


def agreement_payload(session: Session, *, project: Project) -> dict[str, Any]:
    """Percent agreement, Fleiss' kappa, Krippendorff's alpha, per class and per pair, and the human reference; in
    a detection project box agreement per pair and pooled. Takes seconds on a large project: a job's work."""
    if project.task_type == TaskType.detection:
        return _plain(_box_agreement(box_agreement_report(session, project=project), labels=list(project.labels)))
    report = agreement_report(session, project=project)
    figures = report.agreement
    ref = [{"id": a, "name": report.names.get(a, f"user {a}")} for a in report.annotators]
    return _plain(
        {
            "labels": report.labels,
            "annotators": ref,
            "excluded_annotators": report.excluded_annotators,
            "reason": report.reason,
            "items": figures.items,
            "percent_agreement": asdict(figures.percent_agreement),
            "unanimous": figures.unanimous,
            "fleiss_kappa": asdict(figures.fleiss_kappa),
            "krippendorff_alpha": asdict(figures.krippendorff_alpha),
            "per_class": [
                {
                    "label": report.labels[c.label],
                    "ratings": c.ratings,
                    "fleiss_kappa": asdict(c.fleiss_kappa),
                    "krippendorff_alpha": asdict(c.krippendorff_alpha),
                }
                for c in figures.per_class
            ],
            "pairs": [
                {
                    "annotator_a": ref[p.first],
                    "annotator_b": ref[p.second],
                    "shared": p.shared,
                    "percent_agreement": p.percent_agreement,
                    "cohen_kappa": asdict(p.cohen_kappa),
                }
                for p in figures.pairs
            ],
            "pairs_below_minimum": figures.pairs_below_minimum,
            "min_shared_items": MIN_SHARED_ITEMS,
            "human_reference": asdict(report.human_reference),
        }
    )


def _box_card(card: BoxScorecard | None) -> dict[str, Any] | None:
    if card is None:
        return None
    confusions = sorted(card.confusions.items(), key=lambda item: (-item[1], item[0]))
    return {
        **{k: v for k, v in asdict(card).items() if k not in ("confusions", "flags")},
        "recall": card.recall,
        "precision": card.precision,
        "confusions": [{"expected": e, "given": g, "boxes": n} for (e, g), n in confusions],
        "flags": [asdict(f) for f in card.flags],
    }


def _exclusion(exclusion: Exclusion | None) -> dict[str, Any] | None:
    return None if exclusion is None else asdict(exclusion)


def _box_scorecards(cards: BoxScorecards, *, labels: list[str]) -> dict[str, Any]:
    return {
        "labels": labels,
        "iou_threshold": cards.iou_threshold,
        "tight_iou": cards.tight_iou,
        "min_images": cards.min_images,
        "annotators": [
            {
                "annotator_id": c.annotator_id,
                "name": c.name,
                "member": c.member,
                "excluded": c.exclusion is not None,
                "exclusion": _exclusion(c.exclusion),
                "answers": c.answers,
                "boxes": c.boxes,
                "speed": asdict(c.speed),
                "against_consensus": _box_card(c.against_consensus),
                "against_gold": _box_card(c.against_gold),
            }
            for c in cards.annotators
        ],
    }


def annotators_payload(session: Session, *, project: Project) -> dict[str, Any]:
    """One scorecard per annotator (Dawid-Skene confusion, gold, agreement, flags); in a detection project their
    boxes against consensus and gold boxes. Takes seconds on a large project: a job's work."""
    if project.task_type == TaskType.detection:
        return _plain(_box_scorecards(box_scorecards(session, project=project), labels=list(project.labels)))
    cards = annotator_scorecards(session, project=project)
    return _plain(
        {
            "consensus_method": cards.method.value,
            "reason": cards.reason,
            "labels": cards.labels,
            "crowd_accuracy": cards.crowd_accuracy,
            "min_gold_answers": MIN_GOLD,
            "min_overlapped_labels": MIN_OVERLAPPED,
            "annotators": [
                {
                    **{k: v for k, v in asdict(c).items() if k not in ("exclusion", "flags")},
                    "excluded": c.exclusion is not None,
                    "exclusion": _exclusion(c.exclusion),
                    "gold_accuracy": c.gold_accuracy,
                    "flags": [asdict(f) for f in c.flags],
                }
                for c in cards.annotators
            ],
        }
    )


PAYLOADS = {"agreement": agreement_payload, "annotators": annotators_payload}


def newest_label_id(session: Session, *, project_id: int) -> int:
    """The newest annotation's id (an index lookup): a report that saw it covers every label."""
    return session.scalar(select(func.max(Annotation.id)).where(Annotation.project_id == project_id)) or 0


def current_labels(session: Session, *, project_id: int) -> int:
    return (
        session.scalar(select(func.count()).where(Annotation.project_id == project_id, Annotation.is_current.is_(True)))
        or 0
    )


def compute_reports(session: Session, *, project: Project) -> dict[str, Any]:
    """Both reports and what they cover, read in one transaction; ``store_reports`` writes them."""
    through = newest_label_id(session, project_id=project.id)
    labels = current_labels(session, project_id=project.id)
    return {
        "labels": labels,
        "labels_through": through,
        "payloads": {kind: compute(session, project=project) for kind, compute in PAYLOADS.items()},
    }


def store_reports(
    session: Session, *, project_id: int, computed: dict[str, Any], job_id: int | None = None, started: datetime
) -> None:
    """Write the reports (one row per kind, replaced). A change that marked the old ones outdated after
    ``started`` keeps the new ones outdated too: they were read before it."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    outdated = session.scalar(
        select(func.max(QualityReport.outdated_at)).where(
            QualityReport.project_id == project_id, QualityReport.outdated_at > started
        )
    )
    for kind, payload in computed["payloads"].items():
        row = {
            "project_id": project_id,
            "kind": kind,
            "payload": payload,
            "computed_at": utcnow(),
            "labels": computed["labels"],
            "labels_through": computed["labels_through"],
            "outdated_at": outdated,
            "job_id": job_id,
        }
        insert = dialect.insert(QualityReport).values(row)
        changing = ("payload", "computed_at", "labels", "labels_through", "outdated_at", "job_id")
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["project_id", "kind"], set_={name: insert.excluded[name] for name in changing}
            )
        )


def stored_report(session: Session, *, project_id: int, kind: str) -> tuple[dict[str, Any], Freshness] | None:
    """The stored report of ``kind`` with its freshness; None when none was computed yet."""
    row = session.execute(
        select(
            QualityReport.payload,
            QualityReport.computed_at,
            QualityReport.labels,
            QualityReport.labels_through,
            QualityReport.outdated_at,
        ).where(QualityReport.project_id == project_id, QualityReport.kind == kind)
    ).first()
    if row is None:
        return None
    payload, computed_at, labels, through, outdated_at = row
    newer = newest_label_id(session, project_id=project_id) > through
    return payload, Freshness(computed_at, labels, through, newer, newer or outdated_at is not None)


def card_human_reference(session: Session, *, project_id: int) -> dict[str, Any]:
    """The human reference a model card shows: the stored agreement report's when it is current (one JSON field
    read by the database), else computed now (it reads the labels of every overlapped test image)."""
    row = session.execute(
        select(QualityReport.payload["human_reference"], QualityReport.labels_through, QualityReport.outdated_at).where(
            QualityReport.project_id == project_id, QualityReport.kind == "agreement"
        )
    ).first()
    if row is not None and row[0] is not None and row[2] is None:
        if newest_label_id(session, project_id=project_id) <= row[1]:
            return dict(row[0])
    return human_reference(session, project_id)


def reports_outdated(session: Session, *, project_id: int) -> datetime | None:
    """When the stored reports were computed, if they are outdated now (so a job should recompute them); None
    when there are none or they are current."""
    row = session.execute(  # the freshness columns alone: the policy check asks this at every label notice
        select(QualityReport.computed_at, QualityReport.labels_through, QualityReport.outdated_at).where(
            QualityReport.project_id == project_id, QualityReport.kind == "annotators"
        )
    ).first()
    if row is None:
        return None
    computed_at, through, outdated_at = row
    if outdated_at is None and newest_label_id(session, project_id=project_id) <= through:
        return None
    return computed_at


def patch_exclusion(session: Session, *, project_id: int, annotator_id: int, exclusion: Exclusion | None) -> None:
    """Show an exclusion (or its end) in the stored reports at once, and mark them outdated: their figures change
    only when a recompute refits consensus without (or with) the annotator's labels."""
    for report in session.scalars(select(QualityReport).where(QualityReport.project_id == project_id)):
        payload = dict(report.payload)
        if report.kind == "annotators":
            payload["annotators"] = [
                {**card, "excluded": exclusion is not None, "exclusion": _plain(_exclusion(exclusion))}
                if card["annotator_id"] == annotator_id
                else card
                for card in payload["annotators"]
            ]
        else:
            excluded = set(payload["excluded_annotators"]) - {annotator_id}
            payload["excluded_annotators"] = sorted(excluded | ({annotator_id} if exclusion else set()))
            if exclusion is not None:
                payload["annotators"] = [a for a in payload["annotators"] if a["id"] != annotator_id]
        report.payload = payload
        report.outdated_at = utcnow()
    session.flush()
