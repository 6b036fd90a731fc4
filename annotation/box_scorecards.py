"""Box scorecards: each annotator's boxes against the consensus boxes and the gold boxes.

An answer is *checked* as in classification: on an image someone else answered too, against the image's
consensus boxes; on a gold question, against its gold boxes. The two are scored apart (``annotation.boxes.
box_scorecard``), since consensus is partly the annotator's own vote and gold is not, and each raises its
flags (missed objects, extra boxes, loose boxes, class confusion, merges) once about 20 images are scored.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation.boxes import MIN_IMAGES, Box, BoxScorecard, box_scorecard
from annotation.scorecards import Exclusion, Speed, who
from storage.models import Annotation, Image, Project
from storage.projects import project_settings


@dataclass(frozen=True)
class BoxAnnotatorCard:
    annotator_id: int
    name: str
    member: bool
    exclusion: Exclusion | None
    answers: int  # current answers, one per image
    boxes: int  # boxes in those answers
    speed: Speed
    against_consensus: BoxScorecard | None  # on images someone else answered too; None when there are none
    against_gold: BoxScorecard | None  # on gold questions; None when they answered none


@dataclass(frozen=True)
class BoxScorecards:
    iou_threshold: float
    tight_iou: float
    min_images: int  # images scored before any flag
    annotators: list[BoxAnnotatorCard]


def _boxes(stored: list[dict[str, Any]] | None) -> list[Box]:
    return [Box(**box) for box in stored or []]


def box_scorecards(session: Session, *, project: Project) -> BoxScorecards:
    """Every annotator with a current answer in the project, removed and excluded ones included (an excluded
    annotator's boxes are left out of consensus, so they are measured against the others')."""
    settings = project_settings(project)
    rows = session.execute(
        select(Annotation.annotator_id, Annotation.image_id, Annotation.boxes, Image.consensus_boxes, Image.gold_boxes)
        .join(Image, Image.id == Annotation.image_id)
        .where(Annotation.project_id == project.id, Annotation.is_current)
        .order_by(Annotation.image_id, Annotation.annotator_id)
    ).all()
    ids = sorted({row.annotator_id for row in rows})
    people = who(session, project_id=project.id, ids=ids)
    counted = Counter(row.image_id for row in rows if row.annotator_id not in people.exclusions)
    consensus: dict[int, list[tuple[list[Box], list[Box]]]] = defaultdict(list)
    gold: dict[int, list[tuple[list[Box], list[Box]]]] = defaultdict(list)
    answers, boxes = Counter[int](), Counter[int]()
    for row in rows:
        answers[row.annotator_id] += 1
        boxes[row.annotator_id] += len(row.boxes or [])
        others = counted[row.image_id] - (row.annotator_id not in people.exclusions)
        if row.gold_boxes is not None:
            gold[row.annotator_id].append((_boxes(row.boxes), _boxes(row.gold_boxes)))
        elif others and row.consensus_boxes is not None:
            consensus[row.annotator_id].append((_boxes(row.boxes), _boxes(row.consensus_boxes)))

    def card(pairs: list[tuple[list[Box], list[Box]]]) -> BoxScorecard | None:
        if not pairs:
            return None
        theirs, reference = zip(*pairs, strict=True)
        return box_scorecard(theirs, reference, iou_threshold=settings.iou_threshold, tight_iou=settings.tight_iou)

    return BoxScorecards(
        iou_threshold=settings.iou_threshold,
        tight_iou=settings.tight_iou,
        min_images=MIN_IMAGES,
        annotators=[
            BoxAnnotatorCard(
                annotator_id=a,
                name=people.name(a),
                member=a in people.members,
                exclusion=people.exclusions.get(a),
                answers=answers[a],
                boxes=boxes[a],
                speed=people.speed(a),
                against_consensus=card(consensus[a]),
                against_gold=card(gold[a]),
            )
            for a in ids
        ],
    )
