"""Memory of ``/predict`` for huge images: the API process's peak RSS per request.

The issue's request is 12 black 7999x7999 greyscale PNGs (about 62 KB each, 64 million pixels each): it
took the API process to 3.5 GB and 14 s to answer 409 ``no_model``. Against a real ``labelwheel serve``
(the API process alone: ``LABELWHEEL_EMBEDDED_WORKER=false``; SQLite, local files), with a project that
has no model and one with a champion (a small CNN at 224 px input, random weights: weights do not change
memory), this measures, each request in turn, the process tree's RSS sampled every 20 ms:

* baseline: the server's idle RSS before any request;
* the issue's request to the project with no model (target: 409, peak <= 300 MB);
* the issue's request to the project with a model (target: 413 ``too_many_pixels``, peak <= 300 MB);
* baseline: a request of 12 small digit PNGs (the first to load the model: the ONNX session);
* the largest requests the default limits take: 4 black 7999x7999 greyscale PNGs, then 4 RGB ones
  (each decoded whole, as PNG must be, one at a time), answered 200.

Requests run in this order in one server; RSS is a high-water mark, so each peak includes what the requests
before it left in the process (the column "over idle" is against the idle server).

Run ``./dev bench predict_memory``. With another checkout's interpreter (``/work/main/.venv/bin/python
bench/predict_memory.py``) the same requests measure that code.
"""

from __future__ import annotations

import io
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from _memory import peak_rss_during, rss_tree
from PIL import Image
from sklearn.datasets import load_digits

from service.launcher import running_server

MB = 1_000_000
TARGET_PEAK_MB = 300
ADMIN_TOKEN = "bench-predict-memory-admin-token-0123"
LABELS = [str(d) for d in range(10)]
INPUT_SIZE = 224
HUGE = 7999
SAMPLE_SECONDS = 0.02


def black_png(mode: str) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (HUGE, HUGE)).save(out, format="PNG")
    return out.getvalue()


def digit_pngs(count: int) -> list[bytes]:
    out = []
    for pixels in load_digits().images[:count]:
        buffer = io.BytesIO()
        Image.fromarray((pixels * 16).clip(0, 255).astype("uint8"), mode="L").save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def make_projects(data: Path) -> tuple[int, int]:
    """A project with no model and one whose champion has every file a prediction needs; their ids."""
    from flywheel.serving.heads import head_bytes
    from flywheel.training.architectures import build_model
    from flywheel.training.artefacts import checkpoint_bytes, head_arrays
    from flywheel.training.onnx_export import export_onnx, onnx_metadata
    from storage.blobs import LocalBlobStore
    from storage.db import Database
    from storage.migrate import upgrade
    from storage.models import ModelKind, ModelStatus, ModelVersion
    from storage.projects import create_project

    url = f"sqlite:///{data / 'labelwheel.db'}"
    upgrade(url)
    db, blobs = Database(url), LocalBlobStore(data / "blobs")
    network = build_model("small_cnn", len(LABELS)).eval()
    with db.session() as session:
        bare = create_project(session, name="no-model", labels=LABELS, settings={})
        served = create_project(session, name="with-model", labels=LABELS, settings={})
        session.flush()
        model = ModelVersion(
            project_id=served.id,
            kind=ModelKind.full,
            status=ModelStatus.champion,
            architecture="small_cnn",
            input_size=INPUT_SIZE,
            labels=LABELS,
            hyperparameters={},
            seed=0,
        )
        session.add(model)
        session.flush()  # its id names it in the ONNX file's metadata
        model.weights_sha256 = blobs.put_bytes(checkpoint_bytes(network.state_dict(), model=model))
        model.head_sha256 = blobs.put_bytes(head_bytes(*head_arrays(network)))
        model.onnx_sha256 = blobs.put_bytes(export_onnx(network, INPUT_SIZE, metadata=onnx_metadata(model)))
        ids = bare.id, served.id
    db.dispose()
    return ids


@dataclass(frozen=True)
class Measure:
    name: str
    status: int
    code: str
    seconds: float
    before: int
    peak: int


def measure(client: httpx.Client, pid: int, name: str, project_id: int, files: list[bytes]) -> Measure:
    """POST the files to /predict while sampling the server's RSS from a second thread."""
    parts = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)]
    answers: list[httpx.Response] = []
    started = time.perf_counter()
    before, peak = peak_rss_during(
        pid,
        lambda: answers.append(client.post(f"/api/v1/projects/{project_id}/predict", files=parts)),
        interval=SAMPLE_SECONDS,
    )
    seconds = time.perf_counter() - started
    (response,) = answers
    code = response.json()["error"]["code"] if response.status_code >= 400 else "-"
    result = Measure(name, response.status_code, code, seconds, before, peak)
    print(f"{name}: {result.status} {code}, {seconds:.2f} s, peak {result.peak / MB:,.0f} MB", flush=True)
    return result


def main() -> None:
    print(f"machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, Python {platform.python_version()}")
    grey, rgb = black_png("L"), black_png("RGB")
    print(f"a black {HUGE}x{HUGE} PNG: {len(grey):,} bytes greyscale, {len(rgb):,} bytes RGB")
    with tempfile.TemporaryDirectory(prefix="labelwheel-bench-") as tmp:
        data = Path(tmp) / "data"
        bare, served = make_projects(data)
        env = {
            **os.environ,
            "LABELWHEEL_DATA_DIR": str(data),
            "LABELWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
            "LABELWHEEL_LOG_LEVEL": "WARNING",
            "LABELWHEEL_EMBEDDED_WORKER": "false",  # the API process alone
        }
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with (
            running_server(env, Path(tmp) / "server.log") as (server, base),
            httpx.Client(base_url=base, headers=headers, timeout=600) as client,
        ):
            idle = rss_tree(psutil.Process(server.pid))
            # The requests first, from the idle server: RSS is a high-water mark (freed memory mostly
            # stays with the process), so a request measured later starts from what earlier ones left.
            rows = [
                measure(client, server.pid, f"12 x {HUGE}^2 grey PNGs, no model", bare, [grey] * 12),
                measure(client, server.pid, f"12 x {HUGE}^2 grey PNGs, model", served, [grey] * 12),
                measure(client, server.pid, "12 digit PNGs, model", served, digit_pngs(12)),
                measure(client, server.pid, f"4 x {HUGE}^2 grey PNGs, model", served, [grey] * 4),
                measure(client, server.pid, f"4 x {HUGE}^2 RGB PNGs, model", served, [rgb] * 4),
            ]
    print()
    print(f"server RSS idle, before any request: {idle / MB:,.0f} MB")
    width = max(len(r.name) for r in rows)
    print(f"{'request':<{width}}  answer                 seconds  peak MB  over idle  result")
    for r in rows:
        answer = f"{r.status} {r.code}"
        verdict = f"{'PASS' if r.peak <= TARGET_PEAK_MB * MB else 'MISS'} (<= {TARGET_PEAK_MB} MB)"
        print(
            f"{r.name:<{width}}  {answer:<21}  {r.seconds:7.2f}  {r.peak / MB:7,.0f}  "
            f"{(r.peak - idle) / MB:+9,.0f}  {verdict}"
        )


if __name__ == "__main__":
    main()
