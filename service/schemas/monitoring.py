from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DriftedInput(BaseModel):
    log_id: int
    input_sha256: str
    image_id: int | None = Field(description="The pool image with these bytes, when it was captured.")
    score: float = Field(description="The domain classifier's out-of-fold probability that it is production data.")
    thumbnail_url: str | None = Field(description="Where the image was captured: its thumbnail.")


class DriftPointRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int | None
    created_at: datetime
    champion_id: int | None
    window_start: datetime
    window_end: datetime
    predictions: int = Field(description="Logged predictions in the window.")
    reference: int = Field(description="The champion's training images compared with.")
    status: str = Field(description="drift when domain_auc > monitoring.drift_auc or mmd_p < monitoring.drift_p.")
    domain_auc: float = Field(description="Cross-validated ROC AUC of a classifier telling the two apart.")
    mmd: float = Field(description="Unbiased MMD² (RBF kernel, median-distance bandwidth).")
    mmd_p: float = Field(description="The MMD permutation test's p-value.")
    label_chi2_p: float | None = Field(description="Chi-square test of predicted vs training label counts.")


class DriftRead(BaseModel):
    points: list[DriftPointRead] = Field(description="The drift series, oldest first.")
    most_drifted: list[DriftedInput] = Field(description="The newest point's inputs least like the training images.")


class DeploymentSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["shadow", "canary"] | None = Field(
        description="shadow: predicts on a copy of live traffic, never answers; canary: answers `share` of the "
        "requests; null: neither."
    )
    share: float | None = Field(
        default=None, gt=0, le=1, description="canary only: the share of /predict requests it answers."
    )

    @model_validator(mode="after")
    def _share_for_canary(self) -> DeploymentSet:
        if (self.mode == "canary") != (self.share is not None):
            raise ValueError("give share (0 to 1] with mode canary, and only then")
        return self


class DeploymentRead(BaseModel):
    model_id: int
    deployment: str
    traffic_share: float | None
    compared: int = Field(description="Inputs both it and the serving side answered (same request).")
    agreement: float | None = Field(description="Share of those where both gave the same label.")
    latency_ms: float | None = Field(description="Its median model time per image.")
    serving_latency_ms: float | None = Field(description="The serving side's, on the same inputs.")
    labeled: int = Field(description="Compared inputs captured into the pool and labeled since.")
    accuracy: float | None
    serving_accuracy: float | None
    p_value: float | None = Field(description="McNemar's exact test on the labeled inputs, as for promotion.")
    verdict: str | None = Field(description="What the promotion rule would say of it against the serving model.")


class PredictionDayRead(BaseModel):
    day: str = Field(description="A UTC day, YYYY-MM-DD.")
    served: int = Field(description="Answers sent (canary answers included).")
    fallback: int = Field(description="Of those, answers an older model gave because the serving one could not.")
    shadow: int = Field(description="Answers of shadow models (and of the serving model beside a canary).")
