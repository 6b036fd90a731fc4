"""The one settings object, read from ``LABELWHEEL_*`` environment variables.

Nothing else in labelwheel reads ``os.environ``: every part gets its configuration from here,
so a wrong value is reported once, at start-up, with the variable's name.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LABELWHEEL_"
# Variables of the test suite and the benchmarks, which share the prefix but are not settings.
_TOOLING_PREFIXES = (f"{ENV_PREFIX}TEST_", f"{ENV_PREFIX}BENCH_")
# The remote commands' server (service/cli_remote.py): they are no settings of this machine's service.
_CLIENT_VARIABLES = {f"{ENV_PREFIX}URL", f"{ENV_PREFIX}TOKEN", f"{ENV_PREFIX}PROFILE"}
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "changethis", "secret", "password", "admin"}


log = logging.getLogger(__name__)


class SettingsError(Exception):
    """A setting is wrong; the message names the environment variable and how to fix it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path(".labelwheel"),
        description="Everything the embedded default keeps: the SQLite database and local blobs.",
    )
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    blob_url: str = Field(default="", description="file:///path or s3://bucket/prefix; empty means data_dir/blobs.")
    s3_endpoint_url: str | None = Field(default=None, description="For S3-compatible stores (MinIO, moto, R2).")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None

    admin_token: str | None = Field(
        default=None, description="When set, an admin user with this token exists after start."
    )

    max_file_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="Largest single image file.")
    max_image_pixels: int = Field(default=64_000_000, gt=0, description="Largest width*height accepted.")
    max_zip_bytes: int = Field(
        default=4 * 1024**3, gt=0, description="Largest total uncompressed size of one zip archive."
    )
    max_zip_entries: int = Field(default=200_000, gt=0)
    max_files_per_request: int = Field(default=10_000, gt=0)
    predict_max_files: int = Field(default=100, gt=0, description="Most images in one /predict request.")
    predict_max_pixels: int = Field(
        default=256_000_000, gt=0, description="Most pixels one /predict request may decode, all images together."
    )
    quality_sync_labels: int = Field(
        default=10_000,
        ge=0,
        description="Up to this many current labels, the Quality page's reports are computed in the request when "
        "labels changed since the stored ones; above, a quality_report job recomputes them (the first: 202).",
    )
    thumbnail_size: int = Field(default=256, ge=16, le=2048)
    model_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A serving model whose files failed to load is tried again after this long (an older model "
        "answers meanwhile).",
    )

    queue_url: str = Field(
        default="", description="redis://HOST:PORT/DB for workers on other machines; empty means a SQLite queue."
    )
    embedded_worker: bool = Field(default=True, description="`serve` also starts a job worker process.")
    train_threads: int = Field(
        default=1, ge=1, le=256, description="Torch threads per job, so training leaves the API its share."
    )
    job_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="The worker's slow lane (training, embeddings, mining) runs this much nicer than the API (Unix "
        "nice): on a machine they share, a training yields the CPU to labeling requests. 0 keeps them equal.",
    )
    job_stale_seconds: float = Field(
        default=30.0, gt=0, description="A running job whose heartbeat is this old has lost its worker."
    )
    upkeep_seconds: int = Field(
        default=60,
        ge=5,
        le=60,
        description="How often a worker's slow lane runs its upkeep: schedules that fell due start their jobs, every "
        "project's policy is checked, old refreshed heads lose their files. Schedules are cron lines to the minute, so "
        "60 misses none; less starts a due schedule sooner.",
    )
    refresh_heads_kept: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Refreshed heads that keep their files besides the serving one: the newest this many.",
    )
    refresh_prune_grace_seconds: float = Field(
        default=600.0,
        ge=0,
        description="A refreshed head beyond those loses its files only this long after it was made.",
    )
    lane_restarts: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Restarts a worker allows each of its lanes within 10 minutes; one more stop ends the worker.",
    )
    pretrained_dir: Path | None = Field(
        default=None, description="Folder of local backbone weight files a project may name; never downloaded."
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="API worker processes for `serve`.")
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:///", "sqlite+pysqlite:///", "postgresql")):
            raise ValueError(
                "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB, "
                "or leave it empty for SQLite in the data directory"
            )
        return value

    @field_validator("blob_url")
    @classmethod
    def _known_blob_store(cls, value: str) -> str:
        if not value:
            return value
        parsed = urlparse(value)
        if parsed.scheme == "file" and parsed.path:
            return value
        if parsed.scheme == "s3" and parsed.netloc:
            return value
        raise ValueError("use file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX")

    @field_validator("queue_url")
    @classmethod
    def _known_queue(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "sqlite:///")):
            raise ValueError("use redis://HOST:PORT/DB or sqlite:///PATH, or leave it empty for SQLite in data_dir")
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.lower() in _PLACEHOLDER_SECRETS or len(value) < 16:
            raise ValueError("must be at least 16 characters and not a placeholder; try `openssl rand -hex 24`")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("use DEBUG, INFO, WARNING or ERROR")
        return level

    @model_validator(mode="after")
    def _s3_credentials_together(self) -> Settings:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(f"set both {ENV_PREFIX}S3_ACCESS_KEY_ID and {ENV_PREFIX}S3_SECRET_ACCESS_KEY, or neither")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'labelwheel.db'}"

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or (self.data_dir.resolve() / "blobs").as_uri()

    @property
    def resolved_queue_url(self) -> str:
        return self.queue_url or f"sqlite:///{self.data_dir.resolve() / 'queue.db'}"

    @property
    def uses_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``LABELWHEEL_*`` variable that names no setting (a typo is otherwise silently ignored),
    with the closest setting's variable when one is close."""
    known = [name.upper() for name in Settings.model_fields]
    lines = []
    for name in sorted(environ):
        upper = name.upper()  # variables are matched to settings whatever their case
        if not upper.startswith(ENV_PREFIX) or upper.startswith(_TOOLING_PREFIXES) or upper in _CLIENT_VARIABLES:
            continue
        setting = upper.removeprefix(ENV_PREFIX)
        if setting in known:
            continue
        closest = difflib.get_close_matches(setting, known, n=1)  # without the prefix, which every name shares
        hint = (
            f"did you mean {ENV_PREFIX}{closest[0]}?" if closest else "see Configuration in the README for the settings"
        )
        lines.append(f"{name} is not a labelwheel setting and is ignored; {hint}")
    return lines


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, warning of unknown variables; raise SettingsError naming the bad
    variable."""
    for line in unknown_variables(os.environ):
        log.warning(line)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            name = f"{ENV_PREFIX}{field.upper()}" if error["loc"] else "settings"
            lines.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
