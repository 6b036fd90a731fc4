"""Distillation and int8 quantization on scikit-learn's digits: what a small student and an int8 file keep of a
teacher's accuracy, and what they save in latency.

The teacher is the service's small CNN at 32 px (the digits project's default), trained as the ``train`` job
trains it (``flywheel.training.fit.train``) on the 1,257 pool digits of a fixed stratified split (540 test
digits, as in ../shared/design/TARGETS.md). The student is the small CNN at 8 px (the digits' own size), fitted by
``flywheel.training.compression.distill_student`` (what the ``distill`` job runs) to the teacher's probabilities
at temperature 2 over the same pool; the int8 files are ``int8_onnx`` of the teacher's and the student's ONNX
exports (what the ``quantize`` job runs), calibrated on 200 pool digits. Each is scored on the test split and
timed in onnxruntime, one image per call on one thread (median of ``--runs``). Aims (issue 16): the student within
1 point of the teacher at >= 3x lower latency; each int8 file within 0.5 point of its float model.
Run ``./dev bench distill`` (``--epochs`` for the teacher and the student).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from flywheel.serving.preprocess import normalize, to_array
from flywheel.training.compression import distill_student, int8_onnx, soft_labels
from flywheel.training.fit import TrainConfig, predict_proba, train
from flywheel.training.onnx_export import export_onnx
from storage.projects import DistillationSettings

TEACHER_SIZE, STUDENT_SIZE, TEST_SIZE, CALIBRATION = 32, 8, 540, 200
AIM_STUDENT_POINTS, AIM_SPEEDUP, AIM_INT8_POINTS = 0.01, 3.0, 0.005


def latency_ms(onnx_bytes: bytes, size: int, runs: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for _ in range(20):
        session.run(["logits"], {"input": image})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(["logits"], {"input": image})
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def onnx_accuracy(onnx_bytes: bytes, images: np.ndarray, truth: np.ndarray) -> float:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return float((session.run(["logits"], {"input": normalize(images)})[0].argmax(1) == truth).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2000, help="Timed calls per model.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_digits()
    pictures = [Image.fromarray((p * 16).clip(0, 255).astype(np.uint8), mode="L") for p in data.images]
    pool, test = train_test_split(
        np.arange(len(data.target)), test_size=TEST_SIZE, stratify=data.target, random_state=0
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, 1 torch and onnxruntime thread; pool {len(pool)}, "
        f"test {len(test)}; teacher small CNN at {TEACHER_SIZE} px, student small CNN at {STUDENT_SIZE} px, "
        f"{args.epochs} epochs each",
        flush=True,
    )

    def arrays(indices: np.ndarray, size: int) -> np.ndarray:
        return np.stack([to_array(pictures[i], size) for i in indices])

    started = time.perf_counter()
    teacher = train(
        TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=32, seed=0, threads=1),
        train_images=arrays(pool, TEACHER_SIZE),
        train_labels=data.target[pool],
        dev_images=np.zeros((0, TEACHER_SIZE, TEACHER_SIZE, 3), dtype=np.uint8),
        dev_labels=data.target[:0],
        num_classes=10,
    ).model
    print(f"teacher trained in {time.perf_counter() - started:.0f} s", flush=True)
    settings = DistillationSettings(epochs=args.epochs, input_size=STUDENT_SIZE, temperature=2.0)
    started = time.perf_counter()
    soft = soft_labels(predict_proba(teacher, arrays(pool, TEACHER_SIZE)), settings.temperature)
    student = distill_student(arrays(pool, STUDENT_SIZE), soft, settings)
    print(f"student distilled in {time.perf_counter() - started:.0f} s", flush=True)

    truth = data.target[test]
    rows = []
    for name, network, size in (("teacher", teacher, TEACHER_SIZE), ("student", student, STUDENT_SIZE)):
        float_bytes = export_onnx(network, size, metadata={})
        int8_bytes = int8_onnx(float_bytes, normalize(arrays(pool[:CALIBRATION], size)))
        test_x = arrays(test, size)
        for variant, onnx_bytes in (("float", float_bytes), ("int8", int8_bytes)):
            rows.append(
                (
                    f"{name} {variant}",
                    onnx_accuracy(onnx_bytes, test_x, truth),
                    latency_ms(onnx_bytes, size, args.runs),
                    len(onnx_bytes),
                )
            )
            print(f"{rows[-1][0]}: accuracy {rows[-1][1]:.4f}, {rows[-1][2]:.4f} ms/image", flush=True)

    by_name = {name: (accuracy, ms) for name, accuracy, ms, _ in rows}
    print(f"\n{'model':<16}{'test accuracy':>14}{'ms/image':>10}{'bytes':>10}")
    for name, accuracy, ms, size in rows:
        print(f"{name:<16}{accuracy:>14.4f}{ms:>10.4f}{size:>10,}")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    teacher_accuracy, teacher_ms = by_name["teacher float"]
    student_accuracy, student_ms = by_name["student float"]
    gap, speedup = teacher_accuracy - student_accuracy, teacher_ms / student_ms
    print(
        f"\nstudent vs teacher: {gap * 100:+.2f} points below, {speedup:.1f}x lower latency: "
        f"{verdict(gap <= AIM_STUDENT_POINTS and speedup >= AIM_SPEEDUP)} (aim: within 1 point at >= 3x)"
    )
    for name in ("teacher", "student"):
        drop = by_name[f"{name} float"][0] - by_name[f"{name} int8"][0]
        ratio = by_name[f"{name} float"][1] / by_name[f"{name} int8"][1]
        print(
            f"{name} int8 vs float: {drop * 100:+.2f} points below, latency ratio float/int8 {ratio:.2f}: "
            f"{verdict(drop <= AIM_INT8_POINTS)} (aim: within 0.5 point)"
        )


if __name__ == "__main__":
    main()
