from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel

from annotation.annotations import (
    lease_next_after,
    list_annotations,
    project_image,
    submit_annotation,
    visible_annotator,
)
from annotation.box_answers import DrawnBox
from annotation.curation import gold_scores, send_for_review, set_gold
from annotation.labels import current_labels
from annotation.queue import PreLabelSource, Task, next_task, progress, skip_task
from flywheel.quality import recompute_reports_soon
from flywheel.serving.prelabels import prelabel_boxes_for, prelabel_for, prelabel_source
from service.deps import (
    AdminProjectForWrite,
    BearerToken,
    CurrentUser,
    EngineerProject,
    EngineerProjectForWrite,
    MemberProject,
    MemberProjectForWrite,
    ReadSessionDep,
    Runtime,
    RuntimeDep,
    SessionDep,
)
from service.schemas.common import ERROR_RESPONSES, MAX_ID, ImageId, Limit, ProjectId
from service.schemas.images import ImageRead
from service.schemas.labeling import (
    AnnotationAndNext,
    AnnotationCreate,
    AnnotationRead,
    AnnotationsPage,
    BoxCreate,
    BoxRead,
    CurrentLabel,
    CurrentLabelsPage,
    GoldScoreRead,
    GoldSet,
    PreLabelBoxesRead,
    PreLabelRead,
    ProgressRead,
    ReviewRequest,
    ReviewResult,
    ScoredBoxRead,
    TaskRead,
)
from storage.db import after_commit
from storage.models import TaskType
from storage.projects import authenticate_member


def _json(model: BaseModel, *, status_code: int = status.HTTP_200_OK) -> Response:
    """The model as JSON, serialized in one step by pydantic (no dict, then ``json.dumps``): the labeling routes
    answer every label with one."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _boxes(given: list[BoxCreate] | None) -> list[DrawnBox] | None:
    return None if given is None else [DrawnBox(**b.model_dump()) for b in given]


def _task_read(runtime: Runtime, task: Task, source: PreLabelSource, *, detection: bool) -> TaskRead:
    """A task with its pre-label: the serving classifier's label, or in a detection project the detector's boxes;
    without a model, the stored prediction ``source`` brings. Called once the lease is committed: a model's inference
    never holds SQLite's write lock or PostgreSQL's row locks."""
    image = task.image
    prelabel, boxes = None if detection else source.stored, None
    if source.model:
        with runtime.db.read_session() as session:
            prelabel = None if detection else prelabel_for(session, runtime.predictor, task=task)
            boxes = prelabel_boxes_for(session, runtime.predictor, task=task) if detection else None
    width, height = image.upright_size
    return TaskRead(
        image_id=image.id,
        project_id=image.project_id,
        content_url=f"/api/v1/images/{image.id}/content",
        thumbnail_url=f"/api/v1/images/{image.id}/thumbnail",
        width=width,
        height=height,
        lease_expires_at=task.lease_expires_at,
        review_reason=task.review_reason,
        prelabel=PreLabelRead(
            label=prelabel.label,
            confidence=prelabel.confidence,
            model_version=prelabel.model_version,
            fallback=prelabel.fallback is not None,
        )
        if prelabel
        else None,
        prelabel_boxes=boxes
        and PreLabelBoxesRead(model_version=boxes[0], boxes=[ScoredBoxRead(**vars(b)) for b in boxes[1]]),
    )


router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["labeling"], responses=ERROR_RESPONSES)

After = Annotated[int | None, Query(ge=0, le=MAX_ID, description="Return items with an id above this one.")]


@router.get(
    "/tasks/next",
    summary="Lease the next image to label (204 when nothing is left for you)",
    response_model=TaskRead,
    responses={204: {"description": "Nothing left to label for you."}},
)
def next_(project_id: ProjectId, token: BearerToken, runtime: RuntimeDep) -> Response:
    """Leases the most useful image you have not been served yet: images that still need labels for overlap first,
    then images sent back for review, then by priority (mining). The lease lasts `lease_minutes`; asking again while
    you hold one returns the same task. 204 when nothing is left for you; `GET .../progress` then says what still
    waits and why."""
    with runtime.db.session() as session:
        principal, project = authenticate_member(session, token=token, project_id=project_id)
        task = next_task(session, principal=principal, project=project)
        source = None if task is None else prelabel_source(session, task=task)
    if task is None or source is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    payload = _task_read(runtime, task, source, detection=project.task_type is TaskType.detection)
    return _json(payload)


@router.post(
    "/tasks/{image_id}/skip", status_code=status.HTTP_204_NO_CONTENT, summary="Give a leased task back unlabeled"
)
def skip(project: MemberProjectForWrite, image_id: ImageId, session: SessionDep, principal: CurrentUser) -> None:
    """Ends your lease on the image now; you are not served it again, others may be."""
    skip_task(session, principal=principal, project=project, image_id=image_id)


@router.post(
    "/annotations",
    status_code=status.HTTP_201_CREATED,
    summary="Submit a label, or boxes in a detection project (a second answer by you for the image is a correction)",
    response_model=AnnotationRead | AnnotationAndNext,
    responses={200: {"model": AnnotationRead | AnnotationAndNext, "description": "A replay of an earlier request."}},
)
def submit(
    project_id: ProjectId,
    token: BearerToken,
    body: AnnotationCreate,
    runtime: RuntimeDep,
    idempotency_key: Annotated[
        str | None, Header(max_length=200, description="Retries with the same key store the label once.")
    ] = None,
    and_next: Annotated[
        bool,
        Query(
            alias="next",
            description="Also lease your next task and answer `{annotation, next_task}`: one round trip per label.",
        ),
    ] = False,
) -> Response:
    """Stores your answer for an image (a lease is not required): `label` in a classification project, `boxes` in a
    detection project (`[]`: no objects), each box checked against the image and named by its index when refused.
    A second answer from you for the same image is a correction: a new row that supersedes the old. With an
    `Idempotency-Key` header a retried request stores the answer once and gets the first answer again (200); another
    body with the same key is a 422. A late submission for an image that got all its labels from others meanwhile is
    a 409 and stores nothing.

    With `next=true` the answer also carries your next task, leased right after the answer is stored: what `GET
    .../tasks/next` would answer right after (`next_task` null where it would answer 204). A retry with the same
    `Idempotency-Key` gets the same annotation and the task you hold then (the same one, unless its lease ended: then
    a fresh one), so you never hold two leases."""
    with runtime.db.session() as session:
        # With the next task: the annotator's user row locked first (``lease_next_after`` says why).
        principal, project = authenticate_member(session, token=token, project_id=project_id, lock_user=and_next)
        result = submit_annotation(
            session,
            principal=principal,
            project=project,
            image_id=body.image_id,
            label=body.label,
            boxes=_boxes(body.boxes),
            duration_ms=body.duration_ms,
            idempotency_key=idempotency_key,
        )
        if not result.replayed:
            after_commit(session, lambda: runtime.notifier.labels_changed(project.id))  # the flywheel decides, not us
        stored = AnnotationRead.model_validate(result.annotation)
        task, source = None, None
        if and_next:
            task = lease_next_after(session, submitted=result, principal=principal, project=project)
            source = None if task is None else prelabel_source(session, task=task)
    # Shaped once the transaction has committed (on SQLite, once the write lock is free for the next writer).
    answer: AnnotationRead | AnnotationAndNext = stored
    if and_next:
        detection = project.task_type is TaskType.detection
        answer = AnnotationAndNext(
            annotation=stored,
            next_task=_task_read(runtime, task, source, detection=detection) if task and source else None,
        )
    return _json(answer, status_code=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED)


@router.get("/annotations", summary="Annotations by id, history included (annotators see their own)")
def index(
    project: MemberProject,
    session: ReadSessionDep,
    principal: CurrentUser,
    after: After = None,
    limit: Limit = 100,
    annotator_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this annotator's (annotators: always their own).")
    ] = None,
    image_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this image's.")] = None,
    current_only: Annotated[bool, Query(description="Leave out annotations that a correction superseded.")] = False,
) -> AnnotationsPage:
    """Every annotation of the project in id order, corrections and superseded rows included (`current_only` leaves
    those out). Annotators see only their own."""
    items = list_annotations(
        session,
        project_id=project.id,
        after=after,
        limit=limit,
        annotator_id=visible_annotator(principal, annotator_id),
        image_id=image_id,
        current_only=current_only,
    )
    return AnnotationsPage(
        items=[AnnotationRead.model_validate(a) for a in items],
        next_after=items[-1].id if len(items) == limit else None,
    )


@router.get("/progress", summary="Counters for the labeling page")
def progress_(project: MemberProject, session: ReadSessionDep, principal: CurrentUser) -> ProgressRead:
    """How many images the project has, how many wait for labels and why (`waiting_reasons`), and how many you
    labeled: what the labeling page shows, including when your queue is empty while images still wait."""
    return ProgressRead(**progress(session, project_id=project.id, annotator_id=principal.id))


@router.get("/labels", summary="The current (consensus) label of each labeled image (admin, engineer)")
def labels(
    project: EngineerProject, session: ReadSessionDep, after: After = None, limit: Limit = 100
) -> CurrentLabelsPage:
    """The current label of each labeled image: Dawid-Skene's most probable label once consensus has been fitted,
    else the majority vote (ties broken by label order and flagged), or the gold answer. In a detection project,
    each image's current `boxes`: the gold boxes, else the consensus of its annotators' boxes (a box is kept when
    at least `box_quorum` of them drew it, a majority by default; its outline is the median of theirs)."""
    items = current_labels(session, project=project, after=after, limit=limit)
    return CurrentLabelsPage(
        items=[
            CurrentLabel(
                image_id=i.id,
                label=i.consensus_label,
                boxes=None if i.consensus_boxes is None else [BoxRead(**b) for b in i.consensus_boxes],
                tie=i.consensus_tie,
                label_count=i.label_count,
                labels_needed=i.labels_needed,
                gold=i.is_gold,
            )
            for i in items
        ],
        next_after=items[-1].id if len(items) == limit else None,
    )


@router.put("/gold", summary="Mark an image as a gold question with its known answer (admin)")
def gold(project: AdminProjectForWrite, body: GoldSet, session: SessionDep, runtime: RuntimeDep) -> ImageRead:
    """Makes the image a gold question: it is served at `gold_rate`, once to each annotator, and their answers are
    scored against this answer, which is also the image's label. In a detection project the answer is `boxes`; an
    answer is correct when each of its boxes matches one gold box of the same label with an IoU of at least 0.5
    (one to one, greedily by IoU) and none is left over on either side."""
    image = set_gold(session, project=project, image_id=body.image_id, label=body.label, boxes=_boxes(body.boxes))
    recompute_reports_soon(session, project_id=project.id, transport=runtime.transport, trigger="gold answer")
    return ImageRead.model_validate(image)


@router.delete("/gold/{image_id}", summary="Unmark a gold question (admin)")
def ungold(project: AdminProjectForWrite, image_id: ImageId, session: SessionDep) -> ImageRead:
    """The image is an ordinary image again; its label comes from the annotators' votes."""
    return ImageRead.model_validate(set_gold(session, project=project, image_id=image_id))


@router.get("/gold/scores", summary="Each annotator's answers to gold questions (admin, engineer)")
def scores(project: EngineerProject, session: ReadSessionDep) -> list[GoldScoreRead]:
    """For each annotator: gold questions answered, answered correctly, and the share correct."""
    return [
        GoldScoreRead(
            annotator_id=s.annotator_id, name=s.name, answered=s.answered, correct=s.correct, accuracy=s.accuracy
        )
        for s in gold_scores(session, project_id=project.id)
    ]


@router.post("/review", summary="Send images back for one more label, with a reason (admin, engineer)")
def review(project: EngineerProjectForWrite, body: ReviewRequest, session: SessionDep) -> ReviewResult:
    """Asks for one more independent label on each image, from someone who has not labeled it, served before fresh
    images with the reason shown on the page. `queued` lists the images that went to the queue (not gold images, nor
    images every annotator member has already labeled)."""
    images = send_for_review(session, project=project, image_ids=body.image_ids, reason=body.reason)
    return ReviewResult(queued=[i.id for i in images if i.queue_tier is not None])


@router.get("/images/{image_id}/annotations", summary="One image's annotation history (annotators see their own)")
def history(
    project: MemberProject, image_id: ImageId, session: ReadSessionDep, principal: CurrentUser
) -> list[AnnotationRead]:
    """Every annotation of one image, superseded rows included. Annotators see only their own."""
    project_image(session, project=project, image_id=image_id)
    items = list_annotations(
        session,
        project_id=project.id,
        after=None,
        limit=10_000,
        image_id=image_id,
        annotator_id=visible_annotator(principal, None),
    )
    return [AnnotationRead.model_validate(a) for a in items]
