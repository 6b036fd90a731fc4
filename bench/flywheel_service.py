"""Flywheel benchmark on scikit-learn's digits, through a real ``labelwheel serve`` and its worker.

Everything goes over loopback HTTP to the embedded default (SQLite, local files, the worker
process ``serve`` starts); labels are submitted by annotators through next-task + submit.

* (b) label -> refresh: with 1,000 labeled images, a champion and its cached embeddings, the time
  from an annotation's 2xx to ``/predict`` answering with a newer refreshed model; median of 20
  trials (target: <= 2 s).
* (a) full training from scratch with every digit labeled: the training job's own duration
  (snapshot, decoding, training, evaluation, ONNX export and check) and the champion card's test
  accuracy, for ``--seeds`` seeds, median (target: >= 0.97 in <= 60 s on 2 cores).
* (c) labeling while a full training runs: four annotators label fresh images (shifted copies of
  the digits) for ``--window`` seconds with no training, then for as long again while a training
  runs; submit p99 during / idle p99 (target: <= 2).

Run ``./dev bench flywheel_service`` (``--seeds N``, ``--window S``). (Not ``bench/flywheel.py``: a script
there would hide the ``flywheel`` package from every benchmark, as Python puts ``bench/`` first on the path.)
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from service.launcher import running_server
from storage.projects import TrainingSettings

ADMIN_TOKEN = "bench-flywheel-admin-token-0123456789"
LABELS = [str(d) for d in range(10)]
REFRESH_LABELS = 1000
TRIALS = 20
REFRESH_INTERVAL = TrainingSettings().refresh_interval_seconds
ANNOTATORS = 4
TARGET_ACCURACY, TARGET_SECONDS, TARGET_REFRESH_S, TARGET_P99_RATIO = 0.97, 60.0, 2.0, 2.0


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray((pixels * 16).clip(0, 255).astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def datasets() -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]]]:
    """The distinct digits, and shifted copies of them (distinct files, same digit) for load phases."""
    data = load_digits()
    seen: set[bytes] = set()
    digits, shifted = [], []
    for pixels, label in zip(data.images, data.target, strict=True):
        file = png(pixels)
        if file not in seen:
            seen.add(file)
            digits.append((file, str(label)))
    for shift in ((0, 1), (1, 0), (0, -1)):
        for pixels, label in zip(data.images, data.target, strict=True):
            file = png(np.roll(pixels, shift, axis=(0, 1)))
            if file not in seen:
                seen.add(file)
                shifted.append((file, str(label)))
    return digits, shifted


class Service:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        self.engineer = self.user("engineer", "engineer")
        self.annotators = [self.user(f"annotator-{i}", "annotator") for i in range(ANNOTATORS)]
        training = {"auto_train": False, "debounce_seconds": 0}
        body = {
            "name": "digits",
            "labels": LABELS,
            "settings": {"overlap_rate": 0, "gold_rate": 0, "training": training},
        }
        self.project = self.call("POST", "/api/v1/projects", self.admin, json=body)["id"]
        for member in [self.engineer, *self.annotators]:
            me = self.call("GET", "/api/v1/users/me", member)
            self.call("POST", f"/api/v1/projects/{self.project}/members", self.admin, json={"user_id": me["id"]})
        self.truth: dict[int, str] = {}

    def call(self, method: str, path: str, headers: dict, **kwargs) -> dict:
        response = self.client.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else {}

    def user(self, name: str, role: str) -> dict:
        token = self.call("POST", "/api/v1/users", self.admin, json={"name": name, "role": role})["token"]
        return {"Authorization": f"Bearer {token}"}

    def upload(self, files: list[tuple[bytes, str]]) -> None:
        for start in range(0, len(files), 500):
            chunk = files[start : start + 500]
            parts = [("files", (f"{start + i}.png", data, "image/png")) for i, (data, _) in enumerate(chunk)]
            result = self.call("POST", f"/api/v1/projects/{self.project}/images", self.admin, files=parts)
            for (_, label), outcome in zip(chunk, result["files"], strict=True):
                self.truth[outcome["image_id"]] = label

    def label_one(self, client: httpx.Client, headers: dict) -> float | None:
        """Next task + its true label; the submit's latency in seconds, None when nothing is left."""
        task = client.get(f"/api/v1/projects/{self.project}/tasks/next", headers=headers)
        if task.status_code == 204:
            return None
        image_id = task.json()["image_id"]
        started = time.perf_counter()
        response = client.post(
            f"/api/v1/projects/{self.project}/annotations",
            json={"image_id": image_id, "label": self.truth[image_id]},
            headers=headers,
        )
        elapsed = time.perf_counter() - started
        if response.status_code != 201:
            raise RuntimeError(f"submit: {response.status_code} {response.text}")
        return elapsed

    def label(self, count: int | None = None, *, seconds: float | None = None) -> list[float]:
        """Annotators label in parallel until ``count`` labels or ``seconds`` pass; submit latencies."""
        latencies: list[float] = []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds if seconds else None

        def work(headers: dict) -> None:
            with httpx.Client(base_url=str(self.client.base_url), timeout=60) as client:
                while True:
                    with lock:
                        if count is not None and len(latencies) >= count:
                            return
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    elapsed = self.label_one(client, headers)
                    if elapsed is None:
                        return
                    with lock:
                        latencies.append(elapsed)

        threads = [threading.Thread(target=work, args=(a,)) for a in self.annotators]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return latencies

    def job(self, kind: str) -> int:
        return self.call("POST", f"/api/v1/projects/{self.project}/jobs", self.engineer, json={"kind": kind})["id"]

    def wait_job(self, job_id: int, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call("GET", f"/api/v1/jobs/{job_id}", self.engineer)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                if job["status"] != "succeeded":
                    raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
                return job
            time.sleep(0.2)
        raise RuntimeError(f"job {job_id} did not finish in {timeout} s")

    def wait_kind(self, kind: str, after: int) -> dict:
        """The first job of ``kind`` with an id above ``after``, once it has finished."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            jobs = self.call("GET", f"/api/v1/projects/{self.project}/jobs", self.engineer)
            found = [j for j in jobs if j["kind"] == kind and j["id"] > after]
            if found:
                return self.wait_job(min(j["id"] for j in found))
            time.sleep(0.2)
        raise RuntimeError(f"no {kind} job appeared")

    def predict_model(self, client: httpx.Client, image: bytes) -> int | None:
        response = client.post(
            f"/api/v1/projects/{self.project}/predict",
            files=[("files", ("x.png", image, "image/png"))],
            headers=self.engineer,
        )
        return response.json()["model_id"] if response.status_code == 200 else None


def seconds_between(job: dict) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()


def refresh_latency(service: Service, probe: bytes) -> list[float]:
    """(b): an annotation's 2xx after a quiet spell, then /predict polled every 20 ms until a newer model answers."""
    results = []
    with httpx.Client(base_url=str(service.client.base_url), timeout=60) as client:
        for _ in range(TRIALS):
            before = service.predict_model(client, probe)
            if service.label_one(client, service.annotators[0]) is None:
                raise RuntimeError("no unlabeled image left for a refresh trial")
            acknowledged = time.perf_counter()
            while True:
                model = service.predict_model(client, probe)
                if model is not None and before is not None and model > before:
                    results.append(time.perf_counter() - acknowledged)
                    break
                if time.perf_counter() - acknowledged > 30:
                    raise RuntimeError("no refreshed model within 30 s")
                time.sleep(0.02)
            # The next trial is a label after a quiet spell (longer than the project's refresh_interval_seconds):
            # under a stream of labels refreshes are spaced by that interval instead.
            time.sleep(REFRESH_INTERVAL + 0.5)
    return results


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    digits, shifted = datasets()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; digits: {len(digits)} images, {len(shifted)} shifted"
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "LABELWHEEL_DATA_DIR": str(Path(tmp) / "data"),
            "LABELWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
            "LABELWHEEL_LOG_LEVEL": "WARNING",
        }
        with (
            running_server(env, Path(tmp) / "server.log") as (_, base),
            httpx.Client(base_url=base, timeout=60) as client,
        ):
            service = Service(client)
            service.upload(digits)

            # (b) 1,000 labels, a champion, its embeddings; then label -> refreshed predictions.
            service.label(REFRESH_LABELS)
            first = service.wait_job(service.job("train"))
            service.wait_kind("embed", after=first["id"])
            latencies = refresh_latency(service, digits[0][0])
            refresh_median = statistics.median(latencies)
            print(
                f"(b) label -> refreshed /predict with {REFRESH_LABELS} labels, {TRIALS} trials: "
                f"median {refresh_median:.2f} s, p90 {np.percentile(latencies, 90):.2f} s, "
                f"min {min(latencies):.2f} s (target <= {TARGET_REFRESH_S} s: "
                f"{'PASS' if refresh_median <= TARGET_REFRESH_S else 'MISS'})"
            )

            # (a) every digit labeled; full trainings from scratch, one per seed.
            service.label()
            runs = []
            for seed in range(args.seeds):
                settings = {"settings": {"training": {"seed": seed}}}
                service.call("PATCH", f"/api/v1/projects/{service.project}/settings", service.admin, json=settings)
                job = service.wait_job(service.job("train"))
                card = service.call("GET", f"/api/v1/models/{job['result']['model_id']}", service.engineer)
                metrics = card["metrics"]
                runs.append((metrics["test_accuracy"], seconds_between(job)))
                print(
                    f"(a) seed {seed}: test accuracy {metrics['test_accuracy']:.3f} on {metrics['test_items']} test "
                    f"images (majority baseline {metrics['baseline_accuracy']:.3f}), {seconds_between(job):.1f} s, "
                    f"best epoch {metrics['best_epoch']}, {card['status']}"
                )
            accuracy = statistics.median(a for a, _ in runs)
            seconds = statistics.median(s for _, s in runs)
            ok = accuracy >= TARGET_ACCURACY and seconds <= TARGET_SECONDS
            print(
                f"(a) median over {args.seeds} seeds: test accuracy {accuracy:.3f} in {seconds:.1f} s "
                f"(target >= {TARGET_ACCURACY} in <= {TARGET_SECONDS:.0f} s: {'PASS' if ok else 'MISS'})"
            )

            # (c) labeling p99, idle and while a full training runs.
            service.upload(shifted)
            idle = service.label(seconds=args.window)
            training = service.job("train")
            while service.call("GET", f"/api/v1/jobs/{training}", service.engineer)["status"] != "running":
                time.sleep(0.05)
            during = service.label(seconds=args.window)
            state = service.call("GET", f"/api/v1/jobs/{training}", service.engineer)
            service.wait_job(training)
            ratio = p99(during) / p99(idle)
            print(
                f"(c) submit latency, {ANNOTATORS} annotators, {args.window:.0f} s each: idle p50/p99 "
                f"{statistics.median(idle) * 1000:.1f}/{p99(idle):.1f} ms ({len(idle)} labels); during training "
                f"{statistics.median(during) * 1000:.1f}/{p99(during):.1f} ms ({len(during)} labels; training still "
                f"{state['status']} at the end of the window, {state['progress']:.0%} done)"
            )
            verdict = "PASS" if ratio <= TARGET_P99_RATIO else "MISS"
            print(f"(c) p99 during / idle: {ratio:.2f} (target <= {TARGET_P99_RATIO}: {verdict})")


if __name__ == "__main__":
    main()
