"""labelwheel as a Label Studio ML backend, through a real ``labelwheel serve`` over loopback HTTP, called as Label
Studio calls it (basic auth, its JSON); a small file server stands in for Label Studio's ``/data/upload/`` files.

* ``/predict`` for 100 tasks as Label Studio sends them: cold (each task's image fetched from the host,
  validated, stored, embedded) and cached (images held, embeddings cached after mining); p50/p99 and images/s,
  against labelwheel's own ``POST /api/v1/projects/{id}/predict`` of the same 100 files (nothing stored), and
  against uploading 100 other new files then predicting them (the same work done by hand), timed in the same run.
* ``/setup`` p50/p99 (target p99 <= 20 ms): Label Studio calls it on every "next task".
* ``/webhook`` answer p50/p99 for ``ANNOTATION_CREATED``, idle and while a full training runs (target p99 <= 20 ms
  either way): the event is applied after the answer.

Run ``./dev bench labelstudio_backend`` (``--quick``: fewer repetitions).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from service.launcher import running_server

ADMIN_TOKEN = "bench-labelstudio-admin-token-0123456789"
LABELS = [str(d) for d in range(10)]
CONFIG = '<View><Image name="img" value="$image"/><Choices name="digit" toName="img">{}</Choices></View>'.format(
    "".join(f'<Choice value="{d}"/>' for d in LABELS)
)
TASKS = 100
LABELED = 300
TARGET_SETUP_P99_MS = TARGET_WEBHOOK_P99_MS = 20.0


def digits() -> list[tuple[bytes, str]]:
    data, seen, out = load_digits(), set(), []
    for pixels, label in zip(data.images, data.target, strict=True):
        buffer = io.BytesIO()
        Image.fromarray((pixels * 16).clip(0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
        if buffer.getvalue() not in seen:
            seen.add(buffer.getvalue())
            out.append((buffer.getvalue(), str(label)))
    return out


def file_host(files: dict[str, bytes]) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def timed(call) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:500]}")
    return elapsed


def report(name: str, seconds: list[float], images: int = 0) -> None:
    ms = [s * 1000 for s in seconds]
    rate = f", {images / statistics.median(seconds):,.0f} images/s" if images else ""
    print(f"{name}: p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 99):.1f} ms (n={len(ms)}){rate}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: a smoke run")
    args = parser.parse_args()
    cold_rounds, cached_rounds, setups, hooks = (2, 5, 200, 100) if args.quick else (5, 20, 1000, 500)
    files = digits()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work: read ratios, not absolutes)")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        env = {**os.environ, "LABELWHEEL_DATA_DIR": str(Path(tmp) / "data"), "LABELWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
               "LABELWHEEL_LOG_LEVEL": "WARNING"}  # fmt: skip
        host_files: dict[str, bytes] = {}
        host, host_url = file_host(host_files)
        with (
            running_server(env, Path(tmp) / "server.log") as (_, base),
            httpx.Client(base_url=base, timeout=120) as client,
        ):
            training = {"auto_train": False, "input_size": 16, "epochs": 4, "min_epoch_images": 512}
            body = {"name": "digits", "labels": LABELS, "settings": {"overlap_rate": 0, "training": training}}
            project = client.post("/api/v1/projects", json=body, headers=admin).json()["id"]
            parts = [("files", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(files[:LABELED])]
            uploaded = client.post(f"/api/v1/projects/{project}/images", files=parts, headers=admin).json()["files"]
            for outcome, (_, label) in zip(uploaded, files, strict=False):
                answer = {"image_id": outcome["image_id"], "label": label}
                client.post(f"/api/v1/projects/{project}/annotations", json=answer, headers=admin)
            job = client.post(f"/api/v1/projects/{project}/jobs", json={"kind": "train"}, headers=admin).json()
            while client.get(f"/api/v1/jobs/{job['id']}", headers=admin).json()["status"] in ("queued", "running"):
                time.sleep(0.5)
            link = client.put(
                f"/api/v1/projects/{project}/labelstudio",
                json={"url": host_url, "access_token": "bench-token", "ls_project_id": 1},
                headers=admin,
            ).json()
            secret = base64.b64encode(f"labelstudio:{link['basic_auth_password']}".encode()).decode()
            ls = {"Authorization": f"Basic {secret}"}
            backend = f"/labelstudio/{project}"

            def tasks_for(first: int) -> list[dict]:
                batch = []
                for k in range(first, first + TASKS):
                    host_files[f"/data/upload/1/{k:05d}-d.png"] = files[k][0]
                    batch.append({"id": k, "data": {"image": f"/data/upload/1/{k:05d}-d.png"}, "project": 1})
                return batch

            def predict(tasks: list[dict]) -> httpx.Response:
                body = {"tasks": tasks, "project": "1.1", "label_config": CONFIG, "params": {}}
                return client.post(backend + "/predict", json=body, headers=ls)

            def own_predict(tasks: list[dict]) -> httpx.Response:
                parts = [("files", (f"{t['id']}.png", host_files[t["data"]["image"]], "image/png")) for t in tasks]
                return client.post(f"/api/v1/projects/{project}/predict", files=parts, headers=admin)

            def upload_then_predict(tasks: list[dict]) -> httpx.Response:
                parts = [("files", (f"{t['id']}.png", host_files[t["data"]["image"]], "image/png")) for t in tasks]
                client.post(f"/api/v1/projects/{project}/images", files=parts, headers=admin).raise_for_status()
                return own_predict(tasks)

            cold, baseline, stored = [], [], []
            for round_ in range(cold_rounds):  # new images every round: fetched, checked, stored, embedded
                tasks = tasks_for(LABELED + 2 * round_ * TASKS)
                baseline.append(timed(lambda tasks=tasks: own_predict(tasks)))
                cold.append(timed(lambda tasks=tasks: predict(tasks)))
                others = tasks_for(LABELED + (2 * round_ + 1) * TASKS)  # as new to the project as ``tasks`` were
                stored.append(timed(lambda others=others: upload_then_predict(others)))
            cached_tasks = tasks_for(LABELED)
            client.post(f"/api/v1/projects/{project}/jobs", json={"kind": "mine"}, headers=admin)  # caches embeddings
            while any(
                j["status"] in ("queued", "running")
                for j in client.get(f"/api/v1/projects/{project}/jobs", headers=admin).json()
            ):
                time.sleep(0.5)
            cached = [timed(lambda: predict(cached_tasks)) for _ in range(cached_rounds)]
            print(f"/predict, {TASKS} tasks as Label Studio sends them:")
            report("  cold (fetch, validate, store, embed)", cold, TASKS)
            report("  cached images and embeddings      ", cached, TASKS)
            report("  baseline: POST .../predict, same files", baseline, TASKS)
            report("  baseline: upload 100 new files, then POST .../predict", stored, TASKS)
            print(
                f"  ratios to POST .../predict: cold {statistics.median(cold) / statistics.median(baseline):.2f}, "
                f"cached {statistics.median(cached) / statistics.median(baseline):.2f}; cold to upload + predict "
                f"{statistics.median(cold) / statistics.median(stored):.2f}"
            )

            setup = {"project": "1.1", "schema": CONFIG, "hostname": host_url, "access_token": "x"}
            setup_times = [
                timed(lambda: client.post(backend + "/setup", json=setup, headers=ls)) for _ in range(setups)
            ]
            report("/setup", setup_times)
            print(f"  p99 target <= {TARGET_SETUP_P99_MS:.0f} ms: {percentile(setup_times, 99) * 1000:.1f} ms")

            def event(k: int) -> dict:
                task = cached_tasks[k % TASKS]
                result = [{"from_name": "digit", "to_name": "img", "type": "choices", "value": {"choices": ["3"]}}]
                return {"action": "ANNOTATION_CREATED", "task": task, "project": {"id": 1, "label_config": CONFIG},
                        "annotation": {"id": 10_000 + k, "completed_by": 1 + k % 7, "result": result}}  # fmt: skip

            def hook(k: int) -> httpx.Response:
                return client.post(backend + "/webhook", json=event(k), headers=ls)

            idle = [timed(lambda k=k: hook(k)) for k in range(hooks)]
            train = client.post(f"/api/v1/projects/{project}/jobs", json={"kind": "train"}, headers=admin).json()
            while client.get(f"/api/v1/jobs/{train['id']}", headers=admin).json()["status"] == "queued":
                time.sleep(0.05)
            busy, k = [], hooks
            while len(busy) < hooks and client.get(f"/api/v1/jobs/{train['id']}", headers=admin).json()["status"] == (
                "running"
            ):
                busy.append(timed(lambda k=k: hook(k)))
                k += 1
            report("/webhook ANNOTATION_CREATED, idle          ", idle)
            report("/webhook ANNOTATION_CREATED, training runs", busy)
            ratio = statistics.median(busy) / statistics.median(idle)
            print(
                f"  p99 target <= {TARGET_WEBHOOK_P99_MS:.0f} ms: idle {percentile(idle, 99) * 1000:.1f} ms, during "
                f"training {percentile(busy, 99) * 1000:.1f} ms; ratio of medians (training / idle) {ratio:.2f}"
            )
        host.shutdown()


if __name__ == "__main__":
    main()
