"""Reading Label Studio's JSON export: tasks, their image references, choices and annotators.

Only what a classification needs is read: one ``choices`` result per annotation. The Choices
control and the data key of its image come from the project's label config when it is given
(parsed with label-studio-sdk), otherwise from the results' ``from_name``/``to_name`` themselves.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from annotation.annotations import MAX_DURATION_MS
from storage.errors import InvalidInput, PayloadTooLarge
from storage.names import nfc
from storage.users import USER_NAME_PATTERN

MAX_EXPORT_BYTES = 256 * 1024 * 1024
MAX_LABEL_CONFIG_CHARS = 200_000
USER_PREFIX = "ls-"

_USER_NAME = re.compile(USER_NAME_PATTERN)
_UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-(.+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.@-]")


@dataclass(frozen=True)
class Target:
    """Where the label lives: the Choices control (``from_name``), its Image (``to_name``), the data key."""

    from_name: str | None = None
    to_name: str | None = None
    data_key: str | None = None


@dataclass(frozen=True)
class Label:
    user_name: str
    labelstudio_user: str
    label: str
    created_at: datetime | None
    duration_ms: int | None
    position: int


class TaskRejected(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def read_export(fileobj: IO[bytes], *, max_bytes: int = MAX_EXPORT_BYTES) -> list[Any]:
    """The export's list of tasks; InvalidInput when it is not a JSON list, PayloadTooLarge when too big."""
    data = fileobj.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the export has more than {max_bytes:,} bytes; split the Label Studio project's export into several",
            code="export_too_large",
        )
    try:
        tasks = json.loads(data.removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(
            f"the export is not valid JSON ({str(exc)[:200]}): send Label Studio's JSON export (a list of tasks)",
            code="invalid_export",
        ) from None
    if not isinstance(tasks, list):
        raise InvalidInput(
            "the export must be a JSON list of tasks, as Label Studio's JSON export writes it", code="invalid_export"
        )
    return tasks


def target_from_config(label_config: str, project_labels: Sequence[str]) -> Target:
    """The Choices control over an Image in a Label Studio label config (XML), read with label-studio-sdk.

    With several such controls, the one whose choices share most names with the project's labels wins.
    """
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
            if control.tag.lower() == "choices"
            for obj in control.objects
            if obj.tag.lower() == "image"
        ]
    except Exception as exc:  # the SDK raises many kinds on bad XML; any of them means a bad config
        message = f"label_config is not a valid Label Studio config: {str(exc)[:300]}"
        raise InvalidInput(message, code="invalid_config") from None
    if not pairs:
        raise InvalidInput(
            'label_config has no <Choices toName="..."> over an <Image name="..." value="$..."/>: '
            "only image classification projects can be imported",
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
    meta = task.get("meta")
    gold = meta.get("gold_label") if isinstance(meta, dict) else None
    if gold is None:
        return None
    if not isinstance(gold, str) or nfc(gold) not in labels:
        raise TaskRejected(
            "unknown_label",
            f"gold label {str(gold)[:100]!r} is not one of the project's labels; nothing of this task was stored",
            {"label": str(gold)[:100], "valid_labels": list(labels[:100])},
        )
    return nfc(gold)


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
    if isinstance(lead_time, bool) or not isinstance(lead_time, int | float) or not math.isfinite(lead_time):
        return None
    return min(max(round(lead_time * 1000), 0), MAX_DURATION_MS)


def task_labels(task: dict[str, Any], target: Target, labels: Sequence[str]) -> tuple[list[Label], int]:
    """The task's labels, one per annotation that chose one, and how many annotations chose nothing.

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
        chosen = _choices(annotation, target)
        if not chosen:
            skipped += 1  # an empty result is no label either
            continue
        if len(chosen) != 1 or not isinstance(chosen[0], str):
            raise TaskRejected(
                "not_single_choice",
                f"an annotation chose {str(chosen)[:200]}: a classification label is exactly one choice",
            )
        label = nfc(chosen[0])  # labels are stored in NFC, whichever form the export wrote
        if label not in labels:
            raise TaskRejected(
                "unknown_label",
                f"label {label[:100]!r} is not one of the project's labels; nothing of this task was stored",
                {"label": label[:100], "valid_labels": list(labels[:100])},
            )
        name, shown = _user_name(annotation.get("completed_by"))
        found.append(
            Label(
                user_name=name,
                labelstudio_user=shown,
                label=label,
                created_at=_timestamp(annotation.get("created_at")) or _timestamp(annotation.get("updated_at")),
                duration_ms=_duration_ms(annotation.get("lead_time")),
                position=position,
            )
        )
    return found, skipped
