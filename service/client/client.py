"""``Client``: a labelwheel server from Python, for ML engineers at their own desk.

Every method returns the API's own response schemas (pydantic models from ``service/schemas``), so a field means
what the API docs say; every refusal raises ``ApiError`` with the API's error code and message.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel

from service.client.datasets import Progress, PulledDataset, pull_snapshot
from service.client.http import ApiError, Http
from service.client.profiles import load_profile
from service.schemas.images import ImageRead, ImagesPage, IngestSummary
from service.schemas.jobs import JobRead
from service.schemas.labeling import AnnotationAndNext, AnnotationRead, CurrentLabel, CurrentLabelsPage, TaskRead
from service.schemas.models import ModelCard, ModelRead, PredictionRead
from service.schemas.projects import ProjectRead
from service.schemas.quality import AgreementRead, BoxAgreementRead, BoxScorecardsRead, ScorecardsRead
from service.schemas.snapshots import SnapshotRead
from service.schemas.users import UserRead

ProjectRef = int | str | ProjectRead  # an id, a name, or a project read before
PredictInput = str | Path | bytes | Image.Image | np.ndarray
FINISHED = {"succeeded", "failed", "cancelled"}
UPLOAD_BATCH_BYTES = 64 << 20


class Prediction(PredictionRead):
    """One image's answer with the model that gave it (a long list may be answered across a refresh)."""

    model_id: int
    model_version: str


class Client:
    """``Client("http://labelwheel:8000", token)``, or ``Client.from_profile()`` for a server saved with
    ``labelwheel login``. Requests that fail to connect, or meet a 503, are sent again with a growing pause
    (``retries`` times); so are reads and uploads whose connection broke, and submissions, which carry an
    Idempotency-Key."""

    def __init__(self, url: str, token: str, *, timeout: float = 120.0, retries: int = 5, backoff: float = 0.5) -> None:
        self._http = Http(url, token, timeout=timeout, retries=retries, backoff=backoff)
        self._project_ids: dict[str, int] = {}

    @classmethod
    def from_profile(cls, name: str = "default", **options: Any) -> Client:
        profile = load_profile(name)
        return cls(profile.url, profile.token, **options)

    @property
    def url(self) -> str:
        return self._http.url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _get(self, path: str, **params: Any) -> Any:
        clean = {name: value for name, value in params.items() if value is not None}
        return self._http.request("GET", path, repeatable=True, params=clean).json()

    # --- projects ---------------------------------------------------------------------------------

    def me(self) -> UserRead:
        return UserRead.model_validate(self._get("/api/v1/users/me"))

    def projects(self) -> list[ProjectRead]:
        return [ProjectRead.model_validate(p) for p in self._get("/api/v1/projects")]

    def project(self, project: ProjectRef) -> ProjectRead:
        return ProjectRead.model_validate(self._get(f"/api/v1/projects/{self._project_id(project)}"))

    def create_project(
        self, name: str, labels: Sequence[str], *, task_type: str = "classification", settings: dict | None = None
    ) -> ProjectRead:
        body = {"name": name, "labels": list(labels), "task_type": task_type, "settings": settings or {}}
        response = self._http.request("POST", "/api/v1/projects", repeatable=False, json=body)
        return ProjectRead.model_validate(response.json())

    def _project_id(self, project: ProjectRef) -> int:
        if isinstance(project, ProjectRead):
            return project.id
        if isinstance(project, int):
            return project
        name = unicodedata.normalize("NFC", project.strip())  # as the server stores names
        if name not in self._project_ids:
            self._project_ids.update({p.name: p.id for p in self.projects()})
        if name not in self._project_ids:
            raise ApiError(404, "project_not_found", f"no project named {name!r} that you can see on {self.url}")
        return self._project_ids[name]

    # --- images -----------------------------------------------------------------------------------

    def upload(
        self,
        project: ProjectRef,
        paths: Iterable[str | Path],
        *,
        batch_size: int = 100,
        on_progress: Progress | None = None,
    ) -> IngestSummary:
        """Upload image files, zip archives and folders (every file inside, recursively, hidden ones left out), in
        requests of ``batch_size`` files. Each file gets its outcome (accepted, duplicate with the existing id, or
        rejected with the reason); a batch with nothing acceptable is counted, not raised. Sending the same files
        again adds nothing, so an upload is safe to repeat."""
        files = _files_to_upload(paths)
        project_id = self._project_id(project)
        total = IngestSummary(accepted=0, duplicate=0, rejected=0, files=[])
        sent = 0
        for batch in _upload_batches(files, batch_size):
            with ExitStack() as opened:  # each attempt opens the files afresh; all are closed after the batch

                def parts(batch: list[tuple[str, Path]] = batch) -> dict[str, Any]:
                    return {"files": [("files", (name, opened.enter_context(path.open("rb")))) for name, path in batch]}

                try:
                    response = self._http.request(
                        "POST", f"/api/v1/projects/{project_id}/images", repeatable=True, body=parts
                    )  # repeatable: the server deduplicates by sha256
                    summary = IngestSummary.model_validate(response.json())
                except ApiError as error:
                    if error.code != "no_images_accepted":
                        raise
                    summary = IngestSummary.model_validate(error.details)
            total.accepted += summary.accepted
            total.duplicate += summary.duplicate
            total.rejected += summary.rejected
            total.files.extend(summary.files)
            sent += len(batch)
            if on_progress is not None:
                on_progress(sent, len(files))
        return total

    def images(self, project: ProjectRef, *, page_size: int = 1000) -> Iterator[ImageRead]:
        path = f"/api/v1/projects/{self._project_id(project)}/images"
        for page in self._pages(path, ImagesPage, page_size):
            yield from page.items

    def _pages(self, path: str, schema: type[Any], page_size: int) -> Iterator[Any]:
        after = None
        while True:
            page = schema.model_validate(self._get(path, after=after, limit=page_size))
            yield page
            if page.next_after is None:
                return
            after = page.next_after

    # --- labels -----------------------------------------------------------------------------------

    def labels(self, project: ProjectRef, *, page_size: int = 1000) -> Iterator[CurrentLabel]:
        """The current (consensus) label, or boxes, of every labeled image."""
        path = f"/api/v1/projects/{self._project_id(project)}/labels"
        for page in self._pages(path, CurrentLabelsPage, page_size):
            yield from page.items

    def next_task(self, project: ProjectRef) -> TaskRead | None:
        """Lease the next image to label; None when nothing is left for you."""
        path = f"/api/v1/projects/{self._project_id(project)}/tasks/next"
        response = self._http.request("GET", path, repeatable=True, ok=(200, 204))
        return None if response.status_code == 204 else TaskRead.model_validate(response.json())

    def annotate(
        self,
        project: ProjectRef,
        image_id: int,
        *,
        label: str | None = None,
        boxes: list[dict[str, Any]] | None = None,
        duration_ms: int | None = None,
    ) -> AnnotationRead:
        """Submit a label (or boxes in a detection project). Retries carry one Idempotency-Key: stored once."""
        return AnnotationRead.model_validate(self._submit(project, image_id, label, boxes, duration_ms, ""))

    def annotate_and_next(
        self,
        project: ProjectRef,
        image_id: int,
        *,
        label: str | None = None,
        boxes: list[dict[str, Any]] | None = None,
        duration_ms: int | None = None,
    ) -> AnnotationAndNext:
        """``annotate`` and ``next_task`` in one round trip: the stored answer and your next task (None: none left).
        A retry gets the task you hold then, never a second lease."""
        return AnnotationAndNext.model_validate(
            self._submit(project, image_id, label, boxes, duration_ms, "?next=true")
        )

    def _submit(
        self,
        project: ProjectRef,
        image_id: int,
        label: str | None,
        boxes: list[dict[str, Any]] | None,
        duration_ms: int | None,
        query: str,
    ) -> Any:
        body = {"image_id": image_id, "label": label, "boxes": boxes, "duration_ms": duration_ms}
        response = self._http.request(
            "POST",
            f"/api/v1/projects/{self._project_id(project)}/annotations{query}",
            repeatable=True,
            json={name: value for name, value in body.items() if value is not None},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        return response.json()

    # --- models -----------------------------------------------------------------------------------

    def models(self, project: ProjectRef, *, kind: str = "full") -> list[ModelRead]:
        """The project's models, newest first: ``full`` (trainings), ``refresh`` (refreshed heads) or ``all``."""
        found = self._get(f"/api/v1/projects/{self._project_id(project)}/models", kind=kind)
        return [ModelRead.model_validate(m) for m in found]

    def model_card(self, model_id: int) -> ModelCard:
        return self._get(f"/api/v1/models/{model_id}")

    def champion(self, project: ProjectRef) -> ModelCard:
        """The champion's card; ApiError ``no_champion`` before the first promotion."""
        return self._get(f"/api/v1/projects/{self._project_id(project)}/models/champion")

    def promote(self, model_id: int, *, reason: str = "promoted by hand") -> ModelCard:
        """Make a model the champion (an older one: a rollback); promoting the champion again changes nothing."""
        path = f"/api/v1/models/{model_id}/promote"
        return self._http.request("POST", path, repeatable=True, json={"reason": reason}).json()

    def download_model(self, model_id: int, folder: str | Path, *, format: str = "onnx", wait: float = 600) -> Path:
        """Write the model's file (``onnx`` or ``weights``, checked against the sha256 on its card) and its card
        (``<name>.json``) into ``folder``; the file's path. A refreshed head's files are made on first request:
        this waits up to ``wait`` seconds for them."""
        deadline = time.monotonic() + wait
        path = f"/api/v1/models/{model_id}/download"
        while True:
            response = self._http.request("GET", path, repeatable=True, ok=(200, 202), params={"format": format})
            if response.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise ApiError(
                    202, "model_files_pending", f"{response.json()['message']}; still pending after {wait} s"
                )
            time.sleep(float(response.headers.get("Retry-After", "5")))
        card = self.model_card(model_id)  # after the download: a refreshed head's hashes arrive with its files
        expected = card["artefacts"]["onnx_sha256" if format == "onnx" else "weights_sha256"]
        if hashlib.sha256(response.content).hexdigest() != expected:
            raise ApiError(
                200, "download_damaged", f"the {format} file of model {model_id} differs from its card's hash"
            )
        filename = _attachment_name(response) or f"model{model_id}.{format}"
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        (target / filename).write_bytes(response.content)
        (target / Path(filename).with_suffix(".json")).write_text(json.dumps(card, indent=2, ensure_ascii=False))
        return target / filename

    def predict(
        self, project: ProjectRef, images: Iterable[PredictInput], *, batch_size: int = 100
    ) -> list[Prediction]:
        """The serving model's answer for each image (file paths, encoded bytes, PIL images or HxW / HxWx3 uint8
        arrays), in order, ``batch_size`` per request (the server's limit is 100 by default)."""
        path = f"/api/v1/projects/{self._project_id(project)}/predict"
        answers: list[Prediction] = []
        for batch in _batches(list(enumerate(images)), batch_size):
            parts = [("files", _predict_part(i, image)) for i, image in batch]  # bytes: sent again as they are
            response = self._http.request("POST", path, repeatable=True, files=parts)
            result = response.json()  # PredictResult, each prediction validated once, with its model
            model = {"model_id": result["model_id"], "model_version": result["model_version"]}
            answers.extend(Prediction.model_validate({**p, **model}) for p in result["predictions"])
        return answers

    # --- jobs -------------------------------------------------------------------------------------

    def jobs(self, project: ProjectRef) -> list[JobRead]:
        return [JobRead.model_validate(j) for j in self._get(f"/api/v1/projects/{self._project_id(project)}/jobs")]

    def start_job(self, project: ProjectRef, kind: str, params: dict[str, Any] | None = None) -> JobRead:
        """Queue ``train``, ``refresh``, ``embed``, ``label_quality`` or ``mine``."""
        response = self._http.request(
            "POST",
            f"/api/v1/projects/{self._project_id(project)}/jobs",
            repeatable=False,
            json={"kind": kind, "params": params or {}},
        )
        return JobRead.model_validate(response.json())

    def job(self, job_id: int) -> JobRead:
        return JobRead.model_validate(self._get(f"/api/v1/jobs/{job_id}"))

    def wait(
        self,
        job_id: int,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        on_progress: Callable[[JobRead], None] | None = None,
    ) -> JobRead:
        """The job once finished (succeeded, failed or cancelled: check ``status``); ``on_progress`` sees each
        poll. TimeoutError past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.status in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s: {job.message}")
            time.sleep(poll)

    def cancel_job(self, job_id: int) -> JobRead:
        response = self._http.request("DELETE", f"/api/v1/jobs/{job_id}", repeatable=False)
        return JobRead.model_validate(response.json())

    # --- snapshots --------------------------------------------------------------------------------

    def snapshots(self, project: ProjectRef) -> list[SnapshotRead]:
        found = self._get(f"/api/v1/projects/{self._project_id(project)}/snapshots")
        return [SnapshotRead.model_validate(s) for s in found]

    def snapshot(self, snapshot_id: int) -> SnapshotRead:
        return SnapshotRead.model_validate(self._get(f"/api/v1/snapshots/{snapshot_id}"))

    def create_snapshot(self, project: ProjectRef) -> SnapshotRead:
        """Freeze the current labels (the same labels give the same snapshot)."""
        path = f"/api/v1/projects/{self._project_id(project)}/snapshots"
        return SnapshotRead.model_validate(self._http.request("POST", path, repeatable=True).json())

    def pull_dataset(
        self,
        snapshot_id: int,
        folder: str | Path,
        *,
        format: str | None = None,
        on_progress: Progress | None = None,
    ) -> PulledDataset:
        """Download a snapshot's images and labels into ``folder``, with ``labels.csv`` and ``snapshot.json``:
        classification as ``imagefolder`` (``train/<label>/``, ``test/<label>/``; the default) or ``csv``
        (``images/``), detection as ``coco`` (``train/``, ``test/``, ``annotations/``; the default) or ``yolo``
        (``images/``, ``labels/``, ``data.yaml``). Every image is checked against its sha256; pulling again into
        the same folder fetches only what is missing or damaged. ``on_progress(done, total)`` sees each image."""
        return pull_snapshot(
            self._http, snapshot_id=snapshot_id, folder=Path(folder), fmt=format, on_progress=on_progress
        )

    # --- label quality ----------------------------------------------------------------------------

    def agreement(self, project: ProjectRef, *, timeout: float | None = None) -> AgreementRead | BoxAgreementRead:
        """The stored agreement report (``report`` says over which labels); a large project's first one is waited
        for while its job computes it (TimeoutError past ``timeout`` seconds)."""
        found = self._quality_report(f"/api/v1/projects/{self._project_id(project)}/agreement", timeout)
        return _by_task_type(found, AgreementRead, BoxAgreementRead)

    def scorecards(self, project: ProjectRef, *, timeout: float | None = None) -> ScorecardsRead | BoxScorecardsRead:
        """The stored scorecards, as ``agreement``."""
        found = self._quality_report(f"/api/v1/projects/{self._project_id(project)}/annotators", timeout)
        return _by_task_type(found, ScorecardsRead, BoxScorecardsRead)

    def _quality_report(self, path: str, timeout: float | None) -> dict[str, Any]:
        found = self._get(path)
        if found.get("status") == "computing":  # 202: the first report of a large project is being computed
            self.wait(found["job_id"], timeout=timeout)
            found = self._get(path)
        return found


def _by_task_type(found: dict[str, Any], classification: type[BaseModel], detection: type[BaseModel]) -> Any:
    return (detection if found.get("task_type") == "detection" else classification).model_validate(found)


def _files_to_upload(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """(name to send, path) of every file: a folder's files by their path inside it."""
    files = []
    for given in map(Path, paths):
        if given.is_dir():
            inside = sorted(p for p in given.rglob("*") if p.is_file() and not p.name.startswith("."))
            files += [(p.relative_to(given).as_posix(), p) for p in inside]
        elif given.is_file():
            files.append((given.name, given))
        else:
            raise FileNotFoundError(f"{given} is neither a file nor a folder")
    return files


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _upload_batches(files: list[tuple[str, Path]], size: int) -> Iterator[list[tuple[str, Path]]]:
    """Runs of at most ``size`` files and UPLOAD_BATCH_BYTES (a larger file, a big zip, goes alone)."""
    batch: list[tuple[str, Path]] = []
    weight = 0
    for name, path in files:
        file_size = path.stat().st_size
        if batch and (len(batch) == size or weight + file_size > UPLOAD_BATCH_BYTES):
            yield batch
            batch, weight = [], 0
        batch.append((name, path))
        weight += file_size
    if batch:
        yield batch


def _predict_part(index: int, image: PredictInput) -> tuple[str, bytes]:
    if isinstance(image, str | Path):
        return Path(image).name, Path(image).read_bytes()
    if isinstance(image, bytes):
        return f"image-{index}", image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the server sees exactly these pixels
    return f"image-{index}.png", buffer.getvalue()


def _attachment_name(response: Any) -> str | None:
    disposition = response.headers.get("Content-Disposition", "")
    marker = 'filename="'
    if marker not in disposition:
        return None
    return Path(disposition.split(marker, 1)[1].split('"', 1)[0]).name
