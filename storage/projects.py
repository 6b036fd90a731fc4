"""Projects, their ordered label sets and settings, and who may see them."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from sqlalchemy import Text, and_, bindparam, cast, delete, exists, false, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.driver_sql import DriverStatement
from storage.errors import Conflict, Forbidden, InvalidInput, NotFound
from storage.models import Image, Membership, Project, ProjectCount, Role, TaskType, User
from storage.names import clean_name, name_problem, nfc
from storage.users import Principal, authenticate_row, hash_token

MIN_LABELS, MAX_LABELS, MAX_LABEL_LENGTH, MAX_PROJECT_NAME_LENGTH = 2, 1000, 100, 200
MAX_BOXES = 10_000  # the most boxes one detection answer may hold, whatever a project's max_boxes says
# A label's key on the labeling page: one visible character, not the page's own keys s (skip) and u (undo),
# in either case. Explicit ASCII classes, so the API schema (Rust regex) and the validator (Python re) agree.
KEY_PATTERN = r"^[^\x00-\x20\x7f-\x9f]$"
ACTION_KEYS = frozenset("suSU")
HotKey = Annotated[str, WithJsonSchema({"type": "string", "pattern": r"^[^\x00-\x20\x7f-\x9fsuSU]$"})]


class AugmentationSettings(BaseModel):
    """Training augmentation; the defaults suit the image size (no flips for small images such as digits)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    hflip: bool | None = Field(default=None, description="Mirror images; default: only above 64 px.")
    rotate_degrees: float = Field(default=10.0, ge=0, le=180)
    scale: float = Field(default=0.1, ge=0, le=0.5, description="Zoom in or out by up to this share.")
    translate: float = Field(default=0.08, ge=0, le=0.5, description="Shift by up to this share of the side.")
    brightness_contrast: float = Field(default=0.15, ge=0, le=1)


class TrainingSettings(BaseModel):
    """When the flywheel retrains, and how."""

    model_config = ConfigDict(extra="forbid")

    auto_train: bool = Field(default=True, description="Train when labels have grown enough, with no human action.")
    auto_refresh: bool = Field(
        default=True,
        description="Refit the champion's head within seconds of new labels (a "
        "centernet_small detector: fine-tune its heads, in seconds).",
    )
    min_new_labels: int = Field(default=50, ge=1, description="Train after at least this many new labels ...")
    growth: float = Field(default=0.2, ge=0, le=10, description="... or this share of growth, whichever is larger.")
    debounce_seconds: float = Field(default=10.0, ge=0, le=3600, description="Wait for labels to settle first.")
    refresh_interval_seconds: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="A refresh starts at once after a quiet spell, else this long after the previous one started: "
        "a stream of labels refreshes at most once per interval, a burst gives one refresh.",
    )
    min_labels: int = Field(default=20, ge=2, description="Fewest labeled training images a training accepts.")
    architecture: (
        Literal[
            "small_cnn",
            "resnet18",
            "mobilenet_v3_small",
            "centernet_small",
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            "ssdlite320_mobilenet_v3_large",
        ]
        | None
    ) = Field(
        default=None,
        description="Classification: small_cnn for images up to 64 px, mobilenet_v3_small above (or resnet18). "
        "Detection: centernet_small up to 128 px, fasterrcnn_mobilenet_v3_large_320_fpn above (or "
        "ssdlite320_mobilenet_v3_large).",
    )
    input_size: int | None = Field(
        default=None,
        ge=16,
        le=512,
        description="Default: 32 for small_cnn, else 224; for centernet_small the median image side rounded up to "
        "16 (at most 128), else 320.",
    )
    pretrained_weights: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="A file in LABELWHEEL_PRETRAINED_DIR with backbone weights; random init when unset.",
    )
    epochs: int = Field(default=20, ge=1, le=1000)
    patience: int = Field(
        default=8, ge=1, le=1000, description="With a dev split: epochs without a better dev accuracy before stopping."
    )
    min_epoch_images: int = Field(
        default=1024,
        ge=0,
        le=1_000_000,
        description="Each epoch shows at least this many images: a small labeled set repeats (in fresh orders "
        "and augmentations), so a few hundred labels still get enough optimizer steps. 0: one pass per epoch.",
    )
    min_dev_images: int = Field(
        default=100,
        ge=0,
        le=100_000,
        description="Early stopping uses a dev split (10% of the training labels) only when it holds at least this "
        "many images; with fewer labels every label trains for all epochs. 0: always a dev split.",
    )
    average_epochs: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Without early stopping, the model is the average of its weights over the last this many "
        "epochs (stochastic weight averaging): steadier from seed to seed. 0: the last epoch's weights.",
    )
    batch_size: int = Field(default=64, ge=1, le=4096)
    learning_rate: float = Field(default=3e-3, gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    promotion_tolerance: float = Field(
        default=0.005,
        ge=0,
        le=0.2,
        description="A new model (or refreshed head) replaces the serving one only if its test accuracy is at most "
        "this far below it (0.005: half a point) and it is not significantly worse (McNemar's test).",
    )
    augmentation: AugmentationSettings = Field(default_factory=AugmentationSettings)


# The active-learning strategies of flywheel/strategies.py (storage imports nothing of ours; a test keeps
# the two lists equal). An unknown name is refused with this list in the message.
MiningStrategy = Literal[
    "random", "least_confidence", "margin", "entropy", "margin_kcenter", "disagreement", "disagreement_kcenter"
]


class MiningSettings(BaseModel):
    """What a mining pass puts at the front of the labeling queue, and which labels it sends back."""

    model_config = ConfigDict(extra="forbid")

    strategy: MiningStrategy = Field(
        default="margin_kcenter",
        description="random, least_confidence, margin, entropy, or margin_kcenter (the most uncertain, spread "
        "over the embeddings so a batch holds no near-duplicates); detection also disagreement and "
        "disagreement_kcenter (where the champion and its fresh update differ most; margin until a fresh update "
        "serves).",
    )
    batch_size: int = Field(default=200, ge=1, le=10_000, description="Images a pass puts at the front of the queue.")
    after_promotion: bool = Field(
        default=True, description="Run a mining pass with every new champion (schedules can add more passes)."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="For the random strategy and tie-breaking.")
    relabel_confidence: float = Field(
        default=0.6,
        ge=0.5,
        le=1,
        description="A training label resting on one vote goes back for review when the model predicts another "
        "label with at least this probability ...",
    )
    relabel_below: float = Field(
        default=0.05, ge=0, le=0.5, description="... or gives the label itself at most this probability."
    )
    relabel_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Relabel tasks waiting at once: at most this share of batch_size; 0 turns relabeling off.",
    )


class DistillationSettings(BaseModel):
    """The student a ``distill`` job trains on the champion's soft labels, for small or fast deployments."""

    model_config = ConfigDict(extra="forbid")
    architecture: Literal["small_cnn", "resnet18", "mobilenet_v3_small"] = Field(
        default="small_cnn", description="The student's architecture."
    )
    input_size: int | None = Field(
        default=None, ge=8, le=512, description="The student's input side; default: half the teacher's (at least 8)."
    )
    epochs: int = Field(default=20, ge=1, le=1000)
    temperature: float = Field(default=2.0, gt=0, le=20, description="Softens the teacher's probabilities.")
    batch_size: int = Field(default=64, ge=1, le=4096)
    learning_rate: float = Field(default=3e-3, gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class MonitoringSettings(BaseModel):
    """What happens to ``/predict`` traffic after the answer: the log, capture into the pool, and drift checks."""

    model_config = ConfigDict(extra="forbid")
    log_days: int = Field(
        default=30,
        ge=0,
        le=3650,
        description="Keep each /predict answer in the prediction log this many days; 0: none.",
    )
    capture: Literal["none", "low_confidence", "all"] = Field(
        default="none",
        description="Store predicted images into the pool (source production) for labeling: none, those below "
        "capture_below confidence, or all; a sample of them by capture_rate.",
    )
    capture_below: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description="low_confidence: the top probability (a detector's: its top box's score) below this.",
    )
    capture_rate: float = Field(default=1.0, ge=0, le=1, description="The share of the qualifying images stored.")
    drift_window: int = Field(
        default=200, ge=20, le=100_000, description="A drift check compares the newest this many logged predictions ..."
    )
    drift_window_hours: float | None = Field(
        default=None, gt=0, le=24 * 365, description="... or, when set, those of the last this many hours."
    )
    drift_auc: float = Field(
        default=0.55, ge=0.5, le=1, description="Drift when the domain classifier's ROC AUC is above this ..."
    )
    drift_p: float = Field(
        default=0.01, gt=0, le=0.5, description="... or the MMD permutation test's p-value is below this."
    )


class ProjectSettings(BaseModel):
    """Per-project settings; unknown keys are refused so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")

    overlap_rate: float = Field(default=0.1, ge=0.0, le=1.0, description="Share of images labeled by several people.")
    overlap_k: int = Field(default=3, ge=2, le=20, description="Annotators per overlapped image.")
    lease_minutes: int = Field(
        default=10, ge=1, le=1440, description="How long a served task is held for one annotator."
    )
    gold_rate: float = Field(default=0.05, ge=0.0, le=1.0, description="Share of tasks that are gold questions.")
    auto_review: bool = Field(
        default=True, description="Send images whose consensus is weak (a tie, or a low posterior) to more annotators."
    )
    review_posterior: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="A consensus whose Dawid-Skene posterior is below this asks for one more label.",
    )
    review_max_labels: int = Field(
        default=5, ge=1, le=20, description="Automatic review stops asking for labels once an image needs this many."
    )
    max_boxes: int = Field(
        default=500,
        ge=1,
        le=MAX_BOXES,
        description="Detection projects only: the most boxes one answer may hold for one image.",
    )
    iou_threshold: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Detection projects only: two annotators' boxes are the same object at this IoU or more.",
    )
    box_quorum: int | None = Field(
        default=None,
        ge=1,
        le=20,
        description="Detection projects only: a box is in an image's consensus when at least this many of the "
        "image's annotators drew it (at most all of them); null: a majority of them.",
    )
    tight_iou: float = Field(
        default=0.75,
        gt=0.0,
        le=1.0,
        description="Detection projects only: a box matched to the consensus below this IoU counts as loose on the "
        "annotator's scorecard.",
    )
    quality_report_interval_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="The Quality page's agreement figures and scorecards are recomputed by a job as labels arrive, "
        "at most once per this many seconds (on a large project each computation takes seconds).",
    )
    hotkeys: dict[str, HotKey | None] = Field(
        default_factory=dict,
        description="Keys of the labeling page, {label: key}: one printable character each, unique, not s or u "
        "(skip, undo); null removes a label's key. Other labels named by one free character get that key, the rest "
        "1…9, 0, then a…z in order.",
    )
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    mining: MiningSettings = Field(default_factory=MiningSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    distillation: DistillationSettings = Field(default_factory=DistillationSettings)

    @field_validator("hotkeys")
    @classmethod
    def _one_key_each(cls, hotkeys: dict[str, str | None]) -> dict[str, str | None]:
        keys = {label: key for label, key in hotkeys.items() if key is not None}
        for label, key in keys.items():
            if not re.fullmatch(KEY_PATTERN, key):
                raise ValueError(f"the key of {label!r} must be one printable character, not {key!r}")
            if key in ACTION_KEYS:
                raise ValueError(f"the key of {label!r} cannot be {key!r}: s skips and u undoes on the labeling page")
        taken = Counter(keys.values())
        if repeated := sorted(key for key, n in taken.items() if n > 1):
            raise ValueError(f"each key may label one label only; given to several: {', '.join(repeated)}")
        return dict(keys)


def validate_labels(labels: list[str]) -> list[str]:
    """The labels in NFC; refuses names against the name policy, duplicates (after NFC) and sets outside 2-1000."""
    cleaned = [nfc(label) for label in labels]
    problems = []
    if not MIN_LABELS <= len(cleaned) <= MAX_LABELS:
        problems.append(f"a project needs {MIN_LABELS} to {MAX_LABELS} labels, got {len(cleaned)}")
    named = ((label, name_problem(label, max_length=MAX_LABEL_LENGTH)) for label in cleaned)
    problems.extend(f"label {label[:100]!r} {problem}" for label, problem in named if problem is not None)
    duplicates = sorted({label for label in cleaned if cleaned.count(label) > 1})
    if duplicates:
        problems.append(
            f"label names must be unique (as written in Unicode NFC); repeated: {', '.join(duplicates[:10])}"
        )
    if problems:
        raise InvalidInput("; ".join(problems[:10]), code="invalid_labels")
    return cleaned


def validate_settings(raw: dict[str, Any] | None, *, labels: list[str]) -> dict[str, Any]:
    try:
        settings = ProjectSettings.model_validate(raw or {})
    except ValidationError as exc:
        details = [{"setting": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        summary = "; ".join(f"{d['setting']}: {d['message']}" for d in details)
        raise InvalidInput(f"invalid project settings: {summary}", code="invalid_settings", details=details) from None
    if unknown := [label for label in settings.hotkeys if label not in labels]:
        message = f"hotkeys: no label named {', '.join(map(repr, unknown[:10]))} in this project's label set"
        details = [{"setting": f"hotkeys.{label}", "message": "not a label of the project"} for label in unknown]
        raise InvalidInput(f"invalid project settings: {message}", code="invalid_settings", details=details)
    return settings.model_dump()


def create_project(
    session: Session,
    *,
    name: str,
    labels: list[str],
    settings: dict[str, Any] | None = None,
    task_type: TaskType = TaskType.classification,
) -> Project:
    name = clean_name(
        name.strip(), what="project name", code="invalid_project_name", max_length=MAX_PROJECT_NAME_LENGTH
    )
    labels = validate_labels(labels)
    project = Project(
        name=name, labels=labels, settings=validate_settings(settings, labels=labels), task_type=task_type
    )
    try:
        with session.begin_nested():
            session.add(project)
    except IntegrityError:
        raise Conflict(f"a project named {name!r} already exists", code="project_exists") from None
    return project


def update_settings(session: Session, *, project: Project, changes: dict[str, Any]) -> Project:
    """A new review_posterior re-marks the classification images whose consensus it makes weak or no longer weak
    (annotation.consensus marks them as it writes consensus, under the setting of the time). Unlabeled images are
    written too: on PostgreSQL the UPDATE then waits for a submission holding one (it may have read the old setting)
    and judges the row it commits; a submission that reads the settings after this commits judges under the new one."""
    before = project_settings(project).review_posterior
    project.settings = validate_settings(_merged(project.settings, changes), labels=project.labels)
    threshold = project_settings(project).review_posterior
    if project.task_type is TaskType.classification and threshold != before:
        weak = or_(
            Image.consensus_tie,
            Image.consensus_label.is_(None),
            func.coalesce(Image.consensus_posterior < threshold, false()),
        )
        session.execute(
            update(Image)
            .where(Image.project_id == project.id, Image.gold_label.is_(None))
            .values(consensus_weak=and_(Image.label_count > 0, weak))
            .execution_options(synchronize_session=False)
        )
    session.flush()
    return project


def take_turns_on_project(session: Session, *, project_id: int) -> None:
    """Lock the project row until the transaction ends, so decisions about the project (jobs, exclusions, canaries)
    take turns on PostgreSQL (SQLite's writers take turns anyway). ``FOR NO KEY UPDATE``, not ``FOR UPDATE``: the
    foreign-key checks of rows inserted meanwhile (a label, an assignment) take a key-share lock on the project row,
    which ``FOR UPDATE`` would block; a label holding its image would then wait on a decision waiting on that image."""
    session.execute(select(Project.id).where(Project.id == project_id).with_for_update(key_share=True))


def project_counts(session: Session, *, project_id: int, figure: str, since: str | None = None) -> dict[str, int]:
    """One of the project's figures as the triggers keep it ({item: count}, zeros left out); ``since``: items from
    this one on (days, as ISO dates)."""
    total = func.sum(ProjectCount.count)
    query = (
        select(ProjectCount.item, total)
        .where(ProjectCount.project_id == project_id, ProjectCount.figure == figure)
        .group_by(ProjectCount.item)
        .having(total != 0)
    )
    if since is not None:
        query = query.where(ProjectCount.item >= since)
    return {item: int(count) for item, count in session.execute(query)}


def compact_counts(session: Session, *, project_id: int) -> int:
    """Fold the project's count rows into one per item (zeros dropped), so a figure's read stays a few rows; returns
    the rows folded. Exactly the rows the delete saw are summed back, so a change inserted meanwhile, committed or
    not, is neither lost nor counted twice. A project whose items have one row each is left as it is."""
    repeated = (
        select(ProjectCount.item)
        .where(ProjectCount.project_id == project_id)
        .group_by(ProjectCount.figure, ProjectCount.item)
        .having(func.count() > 1)
        .limit(1)
    )
    if session.scalar(repeated) is None:
        return 0
    folded = session.execute(
        delete(ProjectCount)
        .where(ProjectCount.project_id == project_id)
        .returning(ProjectCount.figure, ProjectCount.item, ProjectCount.count)
    ).all()
    totals: Counter[tuple[str, str]] = Counter()
    for figure, item, count in folded:
        totals[figure, item] += count
    rows = [
        {"project_id": project_id, "figure": figure, "item": item, "count": count}
        for (figure, item), count in sorted(totals.items())
        if count
    ]
    if rows:
        session.execute(insert(ProjectCount), rows)
    return len(folded)


def _merged(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` over ``current``, group by group: changing one training key keeps the others."""
    merged = dict(current)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _not_found(project_id: int) -> NotFound:
    return NotFound(f"project {project_id} not found", code="project_not_found")


def get_project(session: Session, *, principal: Principal, project_id: int) -> Project:
    """The project, if the caller may see it; otherwise NotFound, exactly as if it did not exist.

    A member's project and their membership come in one statement: this runs on every labeling request."""
    if principal.is_admin:
        project = session.get(Project, project_id)
    else:
        membership = and_(Membership.project_id == Project.id, Membership.user_id == principal.id)
        project = session.scalar(select(Project).join(Membership, membership).where(Project.id == project_id))
    if project is None:
        raise _not_found(project_id)
    return project


# A project's snapshot for the labeling hot path, keyed by everything it holds: a changed label set or setting is a
# new key, never a stale hit, in this process or another. Read-only: shared between requests.
_SNAPSHOTS: dict[tuple[Any, ...], Project] = {}
_SNAPSHOTS_KEPT = 256
# Each snapshot's settings, validated once (``project_settings`` runs on every submission), by the snapshot's id();
# the entry holds the snapshot, so no other object can have that id while it is here.
_SNAPSHOT_SETTINGS: dict[int, tuple[Project, ProjectSettings]] = {}


def _member_query() -> Any:
    member = exists().where(Membership.project_id == Project.id, Membership.user_id == User.id)
    visible = and_(Project.id == bindparam("project_id"), or_(User.role == Role.admin, member))
    return (
        select(
            User.id,
            User.name,
            User.role,
            Project.id,
            Project.name,
            Project.task_type,
            cast(Project.labels, Text),
            cast(Project.settings, Text),
            Project.created_at,
        )
        .select_from(User)
        .outerjoin(Project, visible)
        .where(User.token_hash == bindparam("token_hash"))
    )


_MEMBER = DriverStatement(_member_query())  # compiled once: it runs on every labeling request
# The same, locking the caller's user row (PostgreSQL; FOR NO KEY UPDATE does not block the foreign-key checks of
# inserts naming the user): a request that leases takes it before any other lock, so one annotator's requests take
# turns and each reads the leases the one before it took.
_MEMBER_LOCKING = DriverStatement(_member_query().with_for_update(of=User, key_share=True))


def authenticate_member(
    session: Session, *, token: str | None, project_id: int, lock_user: bool = False
) -> tuple[Principal, Project]:
    """The caller and the project they are a member of (any role), in one statement: what every labeling request
    checks. The token is looked up every time (a rotated token or a removed member stops at once); only the project's
    parsed labels and settings are reused, keyed by their stored text. 401 as ``authenticate``, 404 as
    ``get_project``. The project is a detached snapshot: read it, never change it. ``lock_user``: the caller's user
    row is locked for the transaction (PostgreSQL), as ``annotation.queue.next_task`` would lock it."""
    params = {"token_hash": hash_token(token) if token else "", "project_id": project_id}
    row = (_MEMBER_LOCKING if lock_user else _MEMBER).first(session.connection(), params)
    principal = authenticate_row(token, None if row is None else row[:3])
    assert row is not None  # authenticate_row raised otherwise
    if row[3] is None:
        raise _not_found(project_id)
    key = tuple(row[3:])
    project = _SNAPSHOTS.get(key)
    if project is None:
        id_, name, task_type, labels, settings, created_at = key
        project = Project(
            id=id_,
            name=name,
            task_type=task_type,
            labels=json.loads(labels),
            settings=json.loads(settings),
            created_at=created_at,
        )
        if len(_SNAPSHOTS) >= _SNAPSHOTS_KEPT:
            _SNAPSHOTS.clear()
            _SNAPSHOT_SETTINGS.clear()
        _SNAPSHOTS[key] = project
        _SNAPSHOT_SETTINGS[id(project)] = (project, ProjectSettings.model_validate(project.settings or {}))
    return principal, project


def get_project_by_name(session: Session, *, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == nfc(name)))
    if project is None:
        raise NotFound(f"no project named {name!r}", code="project_not_found")
    return project


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise Forbidden(f"this needs the role {allowed}; you are {principal.role.value}", code="forbidden")


def list_projects(session: Session, *, principal: Principal) -> list[Project]:
    query = select(Project).order_by(Project.id)
    if not principal.is_admin:
        query = query.join(Membership, Membership.project_id == Project.id).where(Membership.user_id == principal.id)
    return list(session.scalars(query))


def is_member(session: Session, *, project_id: int, user_id: int) -> bool:
    return session.get(Membership, (project_id, user_id)) is not None


def add_member(session: Session, *, project: Project, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", code="user_not_found")
    if not is_member(session, project_id=project.id, user_id=user_id):
        session.add(Membership(project_id=project.id, user_id=user_id))
        session.flush()
    return user


def remove_member(session: Session, *, project: Project, user_id: int) -> None:
    membership = session.get(Membership, (project.id, user_id))
    if membership is None:
        raise NotFound(f"user {user_id} is not a member of project {project.id}", code="member_not_found")
    session.delete(membership)
    session.flush()


def list_members(session: Session, *, project: Project) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.project_id == project.id)
            .order_by(User.id)
        )
    )


def require_classification(project: Project, *, feature: str) -> None:
    """Refuse a feature that reads one label per image on a detection project, saying what exists instead."""
    if project.task_type is TaskType.detection:
        raise InvalidInput(
            f"{feature} works on classification projects only; project {project.id} is a detection project, "
            "where labeling, gold questions, review, overlap, consensus boxes, box agreement and scorecards, and "
            "box exports and imports (COCO, YOLO, Label Studio) work, and the current boxes are read from "
            "GET .../labels (detection training comes with issue 14)",
            code="not_for_detection",
        )


def require_detection(project: Project, *, feature: str) -> None:
    """Refuse a feature that reads boxes on a classification project."""
    if project.task_type is TaskType.classification:
        raise InvalidInput(
            f"{feature} works on detection projects only; project {project.id} is a classification project",
            code="not_for_classification",
        )


def project_settings(project: Project) -> ProjectSettings:
    """A project's settings with today's defaults for keys added since they were stored. A snapshot's
    (``authenticate_member``) were validated once: like the snapshot, they are for reading only."""
    cached = _SNAPSHOT_SETTINGS.get(id(project))
    if cached is not None and cached[0] is project:
        return cached[1]
    return ProjectSettings.model_validate(project.settings or {})
