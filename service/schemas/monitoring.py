from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


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
