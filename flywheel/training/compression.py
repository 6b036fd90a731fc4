"""Smaller models for the edge: a student distilled from the champion, and an int8 ONNX file of any model.

``distill`` trains a student (``distillation`` settings: a small architecture and input size) on the teacher's
soft labels (its probabilities at a temperature) over every project image outside the test split, labeled or
not, and evaluates it on the teacher's test split. ``quantize`` makes a static int8 ONNX file of a model with
onnxruntime, calibrated on project images, and checks its accuracy on the same test split against the float file.
Both become model versions (candidates: promoting one is a person's decision) with their lineage and their
per-image latency in onnxruntime on one thread next to their origin's, and download like any model.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from sqlalchemy import select
from torch import nn

from flywheel.jobs.params import QuantizeParams, read_params
from flywheel.jobs.runner import JobContext, JobFailed
from flywheel.serving.heads import head_bytes
from flywheel.serving.preprocess import normalize
from flywheel.serving.registry import champion
from flywheel.training.architectures import build_model
from flywheel.training.artefacts import checkpoint_bytes, head_arrays, load_model
from flywheel.training.datasets import load_arrays
from flywheel.training.fit import predict_proba, to_tensor
from flywheel.training.onnx_export import export_onnx, max_difference, onnx_metadata
from flywheel.training.snapshots import Item, load_items
from storage.models import DatasetSnapshot, Image, ModelKind, ModelStatus, ModelVersion, Project, Split, utcnow
from storage.projects import DistillationSettings, project_settings

ONNX_TOLERANCE = 1e-3
LATENCY_RUNS = 50
CALIBRATION_SEED = 0


def run_distill(ctx: JobContext) -> dict[str, Any]:
    with ctx.db.read_session() as session:
        settings = project_settings(session.get_one(Project, ctx.project_id)).distillation
        teacher = champion(session, project_id=ctx.project_id)
        if teacher is None or teacher.snapshot_id is None or teacher.weights_sha256 is None:
            raise JobFailed(f"project {ctx.project_id} has no champion with weights to distill")
        snapshot = session.get_one(DatasetSnapshot, teacher.snapshot_id)
        labels, items = load_items(ctx.blobs, snapshot)
        test = [item for item in items if item.split is Split.test]
        held_out = {item.image_id for item in test}
        pool = [
            (image_id, sha256)
            for image_id, sha256, split in session.execute(
                select(Image.id, Image.sha256, Image.split).where(Image.project_id == ctx.project_id).order_by(Image.id)
            )
            if image_id not in held_out and split != Split.test
        ]
    size = settings.input_size or max(8, teacher.input_size // 2)
    torch.set_num_threads(ctx.settings.train_threads)
    ctx.progress(0.02, f"the teacher (model {teacher.id}) labels {len(pool)} images")
    network = load_model(ctx.blobs, teacher)
    teacher_x = load_arrays(ctx.blobs, [sha256 for _, sha256 in pool], size=teacher.input_size)
    soft = soft_labels(predict_proba(network, teacher_x), settings.temperature)
    images = load_arrays(ctx.blobs, [sha256 for _, sha256 in pool], size=size)
    student = distill_student(
        images,
        soft,
        settings,
        on_epoch=lambda epoch, loss: ctx.progress(
            0.1 + 0.7 * epoch / settings.epochs, f"epoch {epoch}/{settings.epochs}: loss {loss:.4f}"
        ),
    )
    accuracy = _accuracy(ctx, student, test, labels, size)
    teacher_accuracy = _accuracy(ctx, network, test, labels, teacher.input_size)
    ctx.progress(0.9, "exporting the student's ONNX file")
    # Short write sessions around the slow part (export, checks, timings): on SQLite a write session holds the lock
    # every annotator's submission waits for.
    with ctx.db.session() as session:
        model = ModelVersion(
            project_id=ctx.project_id,
            job_id=ctx.job_id,
            snapshot_id=teacher.snapshot_id,
            parent_id=teacher.id,
            kind=ModelKind.full,
            status=ModelStatus.training,
            architecture=settings.architecture,
            input_size=size,
            labels=list(labels),
            hyperparameters={"distilled_from": teacher.id, **settings.model_dump(), "input_size": size},
            seed=settings.seed,
            labels_through=teacher.labels_through,
        )
        session.add(model)
        session.flush()
    try:
        onnx_bytes = export_onnx(student, size, metadata=onnx_metadata(model))
        difference = max_difference(student, onnx_bytes, size)
        if difference > ONNX_TOLERANCE:
            raise JobFailed(f"the student's ONNX export differs from PyTorch by {difference:.2e}; not stored")
        teacher_onnx = ctx.blobs.read_bytes(teacher.onnx_sha256) if teacher.onnx_sha256 else None
        files = {
            "weights_sha256": ctx.blobs.put_bytes(checkpoint_bytes(student.state_dict(), model=model)),
            "head_sha256": ctx.blobs.put_bytes(head_bytes(*head_arrays(student))),
            "onnx_sha256": ctx.blobs.put_bytes(onnx_bytes),
        }
        metrics = {
            "test_accuracy": accuracy,
            "teacher_test_accuracy": teacher_accuracy,
            "test_items": len(test),
            "distilled_on": len(pool),
            "latency_ms_per_image": onnx_latency_ms(onnx_bytes, size),
            "teacher_latency_ms_per_image": onnx_latency_ms(teacher_onnx, teacher.input_size) if teacher_onnx else None,
            "onnx_max_difference": difference,
        }
    except BaseException:
        with ctx.db.session() as session:
            session.get_one(ModelVersion, model.id).status = ModelStatus.failed
        raise
    with ctx.db.session() as session:
        stored = session.get_one(ModelVersion, model.id)
        for name, sha256 in files.items():
            setattr(stored, name, sha256)
        stored.metrics = metrics
        stored.decision = {"promote": False, "reason": f"a student distilled from model {teacher.id}: promote by hand"}
        stored.status, stored.finished_at = ModelStatus.candidate, utcnow()
    return {
        "model_id": model.id,
        "test_accuracy": accuracy,
        "teacher_test_accuracy": teacher_accuracy,
        "message": f"student model {model.id}: test accuracy {accuracy:.3f} (teacher {teacher_accuracy:.3f})",
    }


def run_quantize(ctx: JobContext) -> dict[str, Any]:
    params = read_params(QuantizeParams, ctx.params)
    with ctx.db.read_session() as session:
        source = session.get(ModelVersion, params.model_id)
        if source is None or source.project_id != ctx.project_id:
            raise JobFailed(f"model {params.model_id} is not a model of project {ctx.project_id}")
        if source.onnx_sha256 is None or source.head_sha256 is None or source.snapshot_id is None:
            raise JobFailed(f"model {source.id} has no ONNX file yet (a refreshed head: download its ONNX first)")
        _, items = load_items(ctx.blobs, session.get_one(DatasetSnapshot, source.snapshot_id))
        test = [item for item in items if item.split is Split.test]
        calibration_rows = session.execute(
            select(Image.id, Image.sha256)
            .where(Image.project_id == ctx.project_id, Image.split != Split.test)
            .order_by(Image.id)
            .limit(params.calibration_images)
        ).all()
        calibration = [sha256 for _, sha256 in calibration_rows]
    ctx.progress(0.1, f"calibrating on {len(calibration)} images")
    float_bytes = ctx.blobs.read_bytes(source.onnx_sha256)
    int8_bytes = int8_onnx(float_bytes, normalize(load_arrays(ctx.blobs, calibration, size=source.input_size)))
    ctx.progress(0.7, "checking the int8 file on the test split")
    test_x = normalize(load_arrays(ctx.blobs, [item.sha256 for item in test], size=source.input_size))
    truth = np.array([source.labels.index(item.label) for item in test])
    float_predicted, int8_predicted = _onnx_argmax(float_bytes, test_x), _onnx_argmax(int8_bytes, test_x)
    accuracy, float_accuracy = _share(int8_predicted == truth), _share(float_predicted == truth)
    metrics = {
        "test_accuracy": accuracy,
        "float_test_accuracy": float_accuracy,
        "agreement_with_float": _share(int8_predicted == float_predicted),
        "test_items": len(test),
        "latency_ms_per_image": onnx_latency_ms(int8_bytes, source.input_size),
        "float_latency_ms_per_image": onnx_latency_ms(float_bytes, source.input_size),
        "onnx_bytes": len(int8_bytes),
        "float_onnx_bytes": len(float_bytes),
    }
    onnx_sha256 = ctx.blobs.put_bytes(int8_bytes)
    with ctx.db.session() as session:  # only the row: the slow work is done (SQLite's write lock is short)
        model = ModelVersion(
            project_id=ctx.project_id,
            job_id=ctx.job_id,
            snapshot_id=source.snapshot_id,
            parent_id=source.id,
            kind=ModelKind.full,
            status=ModelStatus.candidate,
            architecture=source.architecture,
            input_size=source.input_size,
            labels=list(source.labels),
            hyperparameters={
                "quantized_from": source.id,
                "int8": True,
                "calibration_image_ids": [image_id for image_id, _ in calibration_rows],  # its lineage
            },
            seed=source.seed,
            labels_through=source.labels_through,
            weights_sha256=source.weights_sha256,  # the float network: the ONNX file is its int8 form
            head_sha256=source.head_sha256,
            onnx_sha256=onnx_sha256,
            finished_at=utcnow(),
            metrics=metrics,
            decision={"promote": False, "reason": f"the int8 form of model {source.id}: promote by hand"},
        )
        session.add(model)
        session.flush()
    return {
        "model_id": model.id,
        "test_accuracy": accuracy,
        "float_test_accuracy": float_accuracy,
        "message": f"int8 model {model.id}: test accuracy {accuracy:.3f} (float {float_accuracy:.3f})",
    }


def distill_student(
    images: np.ndarray,
    soft: np.ndarray,
    settings: DistillationSettings,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """A fresh student fitted to the teacher's softened probabilities ``soft`` on prepared ``images``."""
    torch.manual_seed(settings.seed)
    student = build_model(settings.architecture, soft.shape[1])
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    rng = np.random.default_rng(settings.seed)
    for epoch in range(1, settings.epochs + 1):
        loss = _distill_epoch(student, images, soft, optimizer, rng, settings.batch_size, settings.temperature)
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, loss)
    return student.eval()


def soft_labels(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities softened at ``temperature`` (1: as they are)."""
    logits = np.log(np.clip(probabilities, 1e-12, 1)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    return (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)


def int8_onnx(float_bytes: bytes, calibration: np.ndarray) -> bytes:
    """A static int8 (QDQ, per-channel weights) form of an ONNX file, calibrated on normalized NCHW images."""
    with tempfile.TemporaryDirectory(prefix="labelwheel-int8-") as folder:
        original, prepared, quantized = (Path(folder) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        original.write_bytes(float_bytes)
        quant_pre_process(str(original), str(prepared))  # shapes inferred and graph optimized, as onnxruntime advises
        quantize_static(
            str(prepared),
            str(quantized),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        return quantized.read_bytes()


def onnx_latency_ms(onnx_bytes: bytes, size: int) -> float:
    """Median milliseconds for one image in onnxruntime on one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    session.run(["logits"], {"input": image})
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        session.run(["logits"], {"input": image})
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def _distill_epoch(
    student: nn.Module,
    images: np.ndarray,
    soft: np.ndarray,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    batch_size: int,
    temperature: float,
) -> float:
    """One pass in a fresh order: the KL divergence from the teacher's softened probabilities, times T²."""
    student.train()
    order, total = rng.permutation(len(images)), 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad()
        log_probabilities = torch.log_softmax(student(to_tensor(images[batch])) / temperature, dim=1)
        loss = nn.functional.kl_div(log_probabilities, torch.from_numpy(soft[batch]), reduction="batchmean")
        (loss * temperature**2).backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch)
    return total / max(len(order), 1)


def _accuracy(ctx: JobContext, network: nn.Module, test: list[Item], labels: list[str], size: int) -> float:
    arrays = load_arrays(ctx.blobs, [item.sha256 for item in test], size=size)
    truth = np.array([labels.index(item.label) for item in test])
    return _share(predict_proba(network, arrays).argmax(1) == truth)


def _onnx_argmax(onnx_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": inputs})[0].argmax(1)


def _share(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


class _Calibration(CalibrationDataReader):
    """Calibration batches of 16 normalized images for onnxruntime's static quantization."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([images[start : start + 16] for start in range(0, len(images), 16)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"input": batch}
