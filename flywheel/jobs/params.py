"""What ``params`` each kind of job a person may start accepts: bounded, typed, and nothing else.

The API validates a request against these before any row exists (anything else is a 422), and a job body
reads its parameters through the same model, so a job stored by any other path (a schedule, the policy,
an older version) is held to the same bounds. The keys the flywheel adds itself (``trigger``, ``cron``,
``labeled``...) sit beside them in the stored params.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from annotation.label_issues import FilterBy
from storage.errors import InvalidInput
from storage.models import JobKind

FOLDS_RANGE = (2, 20)
EPOCHS_RANGE = (1, 1000)  # per fold, so at most 20,000 epochs for one job


def _whole_number(value: Any) -> Any:
    """JSON has one number type: 3.0 is the whole number 3 (JSON Schema's "integer"), 3.5 and "3" are not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole_number)]


class JobParams(BaseModel):
    # strict: "5" or 5.5 is not a number of folds; a typo in a key is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class TrainParams(JobParams):
    """A training follows the project's ``training`` settings."""

    force: bool = Field(
        default=False,
        description="Train even when the champion or the newest training was made from the same labels and "
        "settings (such a training is otherwise skipped: it would make the same model).",
    )


class RefreshParams(JobParams):
    """None: a refresh refits the champion's head on every label."""


class EmbedParams(JobParams):
    """None: the champion's backbone embeds every image."""


class MineParams(JobParams):
    """None: a pass follows the project's ``mining`` settings."""


class DriftParams(JobParams):
    """None: a drift check follows the project's ``monitoring`` settings."""


class DistillParams(JobParams):
    """None: the champion teaches a student made by the project's ``distillation`` settings."""


class QualityReportParams(JobParams):
    """None: agreement and scorecards over every current label."""


class QuantizeParams(JobParams):
    model_id: Whole = Field(ge=1, description="The model whose ONNX file becomes int8.")
    calibration_images: Whole = Field(default=200, ge=16, le=10_000, description="Project images to calibrate on.")


class LabelQualityParams(JobParams):
    folds: Annotated[int, Field(ge=FOLDS_RANGE[0], le=FOLDS_RANGE[1]), BeforeValidator(_whole_number)] | None = Field(
        default=None,
        description="Cross-validation folds; default: 5 (classification), 3 (detection: a fold is a detector's "
        "training).",
    )
    filter_by: FilterBy = Field(
        default="prune_by_class", description="Classification: cleanlab's rule for the flagged set."
    )
    epochs: Whole | None = Field(
        default=None,
        ge=EPOCHS_RANGE[0],
        le=EPOCHS_RANGE[1],
        description="Per fold; default: about 400 optimizer steps (classification), the project's training epochs "
        "(detection).",
    )
    score_below: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Detection: besides the images cleanlab flags, list every image whose label quality score is "
        "at or below this (cleanlab's issues_from_scores); 1.0 ranks every training image. Default: the flagged ones. "
        "Each task type refuses the other's parameter (422).",
    )


# The kinds a person may start through the API; the flywheel starts the others (export) itself.
PARAMS: dict[JobKind, type[JobParams]] = {
    JobKind.train: TrainParams,
    JobKind.refresh: RefreshParams,
    JobKind.embed: EmbedParams,
    JobKind.label_quality: LabelQualityParams,
    JobKind.mine: MineParams,
    JobKind.drift: DriftParams,
    JobKind.distill: DistillParams,
    JobKind.quantize: QuantizeParams,
    JobKind.quality_report: QualityReportParams,
}

P = TypeVar("P", bound=JobParams)


def read_params(model: type[P], stored: Mapping[str, Any]) -> P:
    """A job's own parameters from its stored params (the flywheel's keys left aside); InvalidInput naming
    each bad one."""
    try:
        return model.model_validate({key: value for key, value in stored.items() if key in model.model_fields})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid job params: {problems}", code="invalid_job_params") from None
