"""Reading Label Studio's JSON export: tasks, their image references, answers and annotators.

A classification answer is one ``choices`` result per annotation; a detection answer is every
``rectanglelabels`` result of the annotation, one box each, in percent of the image (none: no objects). The
control (Choices or RectangleLabels) and the data key of its image come from the project's label config when it
is given (parsed with label-studio-sdk), otherwise from the results' ``from_name``/``to_name`` themselves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from annotation.annotations import MAX_DURATION_MS
from annotation.box_answers import DrawnBox
from annotation.imports import ImportedAnswer, SourceBoxes, TaskRejected, finite_number, read_json_file
from storage.errors import InvalidInput
from storage.names import nfc
from storage.users import USER_NAME_PATTERN

MAX_LABEL_CONFIG_CHARS = 200_000
USER_PREFIX = "ls-"

_USER_NAME = re.compile(USER_NAME_PATTERN)
_UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-(.+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.@-]")
# Regions labelwheel's axis-aligned boxes cannot hold: a detection task with one of them is refused, not emptied.
_OTHER_REGIONS = {"rectangle", "polygon", "polygonlabels", "ellipse", "ellipselabels", "keypoint", "keypointlabels",
                  "brush", "brushlabels"}  # fmt: skip


@dataclass(frozen=True)
class Target:
    """Where the answer lives: the control (``from_name``: Choices or RectangleLabels), its Image (``to_name``),
    the data key."""

    from_name: str | None = None
    to_name: str | None = None
    data_key: str | None = None


def read_export(fileobj: IO[bytes]) -> list[Any]:
    """The export's list of tasks; InvalidInput when it is not a JSON list, PayloadTooLarge when too big."""
    tasks = read_json_file(fileobj, what="Label Studio export")
    if not isinstance(tasks, list):
        raise InvalidInput(
            "the export must be a JSON list of tasks, as Label Studio's JSON export writes it", code="invalid_export"
        )
    return tasks


def target_from_config(label_config: str, project_labels: Sequence[str], *, detection: bool = False) -> Target:
    """The Choices control (RectangleLabels, for ``detection``) over an Image in a Label Studio label config (XML),
    read with label-studio-sdk.

    With several such controls, the one whose labels share most names with the project's labels wins.
    """
    tag = "rectanglelabels" if detection else "choices"
    if len(label_config) > MAX_LABEL_CONFIG_CHARS:
        raise InvalidInput(f"label_config has more than {MAX_LABEL_CONFIG_CHARS:,} characters", code="invalid_config")
    if "<!DOCTYPE" in label_config.upper() or "<!ENTITY" in label_config.upper():
        raise InvalidInput("label_config must not contain a DTD or entities", code="invalid_config")
    from label_studio_sdk.label_interface import LabelInterface  # slow to import: only when a config is given

    try:
        interface = LabelInterface(label_config)
        pairs = [
            (control, obj)
            for control in interface.controls
            if control.tag.lower() == tag
            for obj in control.objects
            if obj.tag.lower() == "image"
        ]
    except Exception as exc:  # the SDK raises many kinds on bad XML; any of them means a bad config
        message = f"label_config is not a valid Label Studio config: {str(exc)[:300]}"
        raise InvalidInput(message, code="invalid_config") from None
    if not pairs:
        control_tag = "RectangleLabels" if detection else "Choices"
        kind = "detection" if detection else "classification"
        raise InvalidInput(
            f'label_config has no <{control_tag} toName="..."> over an <Image name="..." value="$..."/>, which a '
            f"{kind} project imports",
            code="invalid_config",
        )
    known = set(project_labels)
    control, obj = max(pairs, key=lambda pair: len(known.intersection(pair[0].labels)))
    return Target(from_name=control.name, to_name=obj.name, data_key=obj.value_name or None)


def _results(annotation: Any) -> list[Any]:
    results = annotation.get("result") if isinstance(annotation, dict) else None
    return results if isinstance(results, list) else []


def _choices(annotation: dict[str, Any], target: Target) -> list[Any]:
    """The chosen values of the annotation's choices results for the target control."""
    chosen: list[Any] = []
    controls = set()
    for result in _results(annotation):
        if not isinstance(result, dict) or result.get("type") != "choices":
            continue
        if target.from_name is not None and result.get("from_name") != target.from_name:
            continue
        value = result.get("value")
        values = value.get("choices") if isinstance(value, dict) else None
        if isinstance(values, list):
            chosen.extend(values)
            controls.add(str(result.get("from_name")))
    if len(controls) > 1:
        raise TaskRejected(
            "not_single_choice",
            f"an annotation has choices from several controls ({', '.join(sorted(controls))[:200]}): send the "
            "project's label_config so the import knows which one holds the class",
        )
    return chosen


def _rectangles(annotation: dict[str, Any], target: Target, labels: Sequence[str]) -> SourceBoxes:
    """The annotation's ``rectanglelabels`` regions for the target control, in percent of the image."""
    boxes, sizes, others = [], set(), 0
    for result in _results(annotation):
        if not isinstance(result, dict):
            continue
        if target.from_name is not None and result.get("from_name") != target.from_name:
            continue
        kind = result.get("type")
        if kind in _OTHER_REGIONS:
            raise TaskRejected(
                "unsupported_region",
                f"an annotation has a {kind} region: labelwheel imports axis-aligned rectanglelabels boxes only"
                + ("" if target.from_name else "; send the label_config to name the RectangleLabels control"),
            )
        if kind != "rectanglelabels":
            others += 1
            continue
        value = result.get("value")
        if not isinstance(value, dict) or not all(finite_number(value.get(k)) for k in ("x", "y", "width", "height")):
            raise TaskRejected("invalid_task", "a rectanglelabels region needs numbers x, y, width and height")
        rotation = value.get("rotation", 0)
        if not finite_number(rotation) or rotation % 360 != 0:
            raise TaskRejected(
                "rotated_box", f"a box is rotated by {str(rotation)[:20]} degrees: labelwheel boxes are axis-aligned"
            )
        turned = result.get("image_rotation", 0)
        if not finite_number(turned) or turned % 360 != 0:
            raise TaskRejected(
                "rotated_box",
                f"a box was drawn on the image turned by {str(turned)[:20]} degrees in Label Studio: its coordinates "
                "are in the turned frame; label on the unturned image, or turn the file itself",
            )
        chosen = value.get("rectanglelabels")
        if not isinstance(chosen, list) or len(chosen) != 1 or not isinstance(chosen[0], str):
            raise TaskRejected(
                "not_single_label", f"a box is labeled {str(chosen)[:200]}: a labelwheel box has exactly one label"
            )
        box = (value["x"], value["y"], value["width"], value["height"])
        boxes.append(DrawnBox(_known(chosen[0], labels), *map(float, box)))
        width: Any = result.get("original_width")
        height: Any = result.get("original_height")
        if finite_number(width) and finite_number(height):
            sizes.add((float(width), float(height)))
    if others and not boxes and target.from_name is None:
        raise TaskRejected(
            "no_boxes",
            "an annotation has results but no rectanglelabels region: send the project's label_config to say that "
            "it drew no boxes (a detection project imports boxes, not choices)",
        )
    return SourceBoxes(tuple(boxes), percent=True, sizes=frozenset(sizes))


def _known(label: str, labels: Sequence[str]) -> str:
    """The label in NFC, as the project stores it; TaskRejected when it is not one of the project's."""
    label = nfc(label)
    if label not in labels:
        raise TaskRejected(
            "unknown_label",
            f"label {label[:100]!r} is not one of the project's labels; nothing of this task was stored",
            {"label": label[:100], "valid_labels": list(labels[:100])},
        )
    return label


def _to_names(task: dict[str, Any]) -> list[str]:
    annotations = task.get("annotations")
    return [
        result["to_name"]
        for annotation in (annotations if isinstance(annotations, list) else [])
        for result in _results(annotation)
        if isinstance(result, dict) and isinstance(result.get("to_name"), str)
    ]


def image_reference(task: dict[str, Any], target: Target) -> str | None:
    data = task["data"]
    keys = [target.data_key] if target.data_key else [*_to_names(task), "image"]
    for key in keys:
        if isinstance(data.get(key), str) and data[key]:
            return data[key]
    if target.data_key is None:
        strings = [v for v in data.values() if isinstance(v, str) and v]
        if len(strings) == 1:
            return strings[0]
    return None


def reference_names(reference: str) -> list[str]:
    """File names an image reference may match: its base name, and that name without Label Studio's prefix.

    ``/data/upload/10/ebf78cc3-digit_0001.png`` -> ``ebf78cc3-digit_0001.png``, ``digit_0001.png``;
    local-storage references keep the path in the query: ``/data/local-files/?d=dir/a.png`` -> ``a.png``.
    """
    parts = urlsplit(reference.replace("\\", "/"))
    path = unquote(parts.path)
    local = parse_qs(parts.query).get("d")
    if local:
        path = local[0]
    name = PurePosixPath(path).name
    if not name:
        return []
    names = [name]
    stripped = _UPLOAD_PREFIX.match(name)
    if stripped:
        names.append(stripped.group(1))
    return names


def meta_sha256(task: dict[str, Any]) -> str | None:
    meta = task.get("meta")
    sha = meta.get("sha256") if isinstance(meta, dict) else None
    return sha if isinstance(sha, str) and _SHA256.match(sha) else None


def meta_gold(task: dict[str, Any], labels: Sequence[str]) -> str | None:
    """The gold label labelwheel's own export of a classification project keeps in ``meta.gold_label``."""
    meta = task.get("meta")
    gold = meta.get("gold_label") if isinstance(meta, dict) else None
    if gold is None:
        return None
    return _known(gold if isinstance(gold, str) else str(gold), labels)


def meta_gold_boxes(task: dict[str, Any], labels: Sequence[str]) -> SourceBoxes | None:
    """The gold boxes labelwheel's own export of a detection project keeps in ``meta.gold_boxes`` (pixels)."""
    meta = task.get("meta")
    gold = meta.get("gold_boxes") if isinstance(meta, dict) else None
    if gold is None:
        return None
    if not isinstance(gold, list) or not all(
        isinstance(b, dict) and isinstance(b.get("label"), str) and all(finite_number(b.get(k)) for k in "xywh")
        for b in gold
    ):
        raise TaskRejected("invalid_task", "meta.gold_boxes must be a list of {label, x, y, w, h} in pixels")
    return SourceBoxes(tuple(DrawnBox(_known(b["label"], labels), *(float(b[k]) for k in "xywh")) for b in gold))


def _user_name(completed_by: Any) -> tuple[str, str]:
    """(labelwheel user name, how Label Studio named the user) for an annotation's ``completed_by``."""
    email = ident = None
    if isinstance(completed_by, dict):
        email, ident = completed_by.get("email"), completed_by.get("id")
    elif isinstance(completed_by, str) and "@" in completed_by:
        email = completed_by
    else:
        ident = completed_by
    if isinstance(email, str) and email.split("@")[0]:
        local = _NOT_IN_NAME.sub("_", email.split("@")[0])
        name, shown = USER_PREFIX + local[: 100 - len(USER_PREFIX)], email
    elif isinstance(ident, int) and not isinstance(ident, bool):
        name, shown = f"{USER_PREFIX}{ident}", str(ident)
    else:
        raise TaskRejected(
            "unknown_annotator",
            f"an annotation has no usable completed_by ({str(completed_by)[:100]!r}): expected a user id or an e-mail",
        )
    if not _USER_NAME.match(name):
        raise TaskRejected("unknown_annotator", f"completed_by {shown[:100]!r} gives no valid user name")
    return name, shown


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # not ISO 8601, or out of range once moved to UTC
        return None


def _duration_ms(lead_time: Any) -> int | None:
    if not finite_number(lead_time):
        return None
    return min(max(round(lead_time * 1000), 0), MAX_DURATION_MS)


def task_answers(
    task: dict[str, Any], target: Target, labels: Sequence[str], *, detection: bool = False
) -> tuple[list[ImportedAnswer], int]:
    """The task's answers, one per annotation that gave one, and how many annotations gave none: a label per
    annotation that chose one or, in a ``detection`` project, the boxes of every annotation not cancelled (an
    empty result is an image with no objects).

    Raises TaskRejected when any annotation is unusable: a task is imported whole or not at all.
    """
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list):
        raise TaskRejected("invalid_task", "the task's annotations are not a list")
    found = []
    skipped = 0
    for position, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise TaskRejected("invalid_task", "an annotation of the task is not an object")
        if annotation.get("was_cancelled"):
            skipped += 1
            continue
        label, boxes = None, None
        if detection:
            boxes = _rectangles(annotation, target, labels)
        else:
            chosen = _choices(annotation, target)
            if not chosen:
                skipped += 1  # an empty result is no label either
                continue
            if len(chosen) != 1 or not isinstance(chosen[0], str):
                raise TaskRejected(
                    "not_single_choice",
                    f"an annotation chose {str(chosen)[:200]}: a classification label is exactly one choice",
                )
            label = _known(chosen[0], labels)
        name, shown = _user_name(annotation.get("completed_by"))
        found.append(
            ImportedAnswer(
                user_name=name,
                source_user=shown,
                label=label,
                boxes=boxes,
                created_at=_timestamp(annotation.get("created_at")) or _timestamp(annotation.get("updated_at")),
                duration_ms=_duration_ms(annotation.get("lead_time")),
                position=position,
            )
        )
    return found, skipped
