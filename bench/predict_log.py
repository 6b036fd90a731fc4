"""What logging every answer and capturing production images costs ``/predict``.

Set up once (not timed), as ``bench/pull.py`` sets up: a project of 500 labeled noise PNGs (64x64) with a champion
(a small CNN at 32 px, random weights). Then against a real ``labelwheel serve`` (the API process alone, SQLite,
local files), requests of ``--batch`` (20) images never sent before, in two settings switched round by round:

* **off**: ``monitoring.log_days`` 0 and ``capture`` none: nothing is written;
* **on**: the log kept 30 days and ``capture`` all: every answer logged with its embedding, every image stored
  into the pool (checked, thumbnailed, deduplicated) after the answer has been sent.

Prints images/s from the median request and the p99 request latency of each, and the ratio on/off (aim: >= 0.9).
The client waits for each answer before it sends the next request, so the work done after an answer competes with
the next request for the CPU, as it would under steady traffic. Run ``./dev bench predict_log`` (``--rounds``).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from service.launcher import running_server

ADMIN_TOKEN = "bench-predict-log-admin-token-0123"
TARGET = 0.9


def noise_pngs(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=20, help="Requests per setting and round.")
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    from pull import make_project, write_images  # the same project set-up as the pull benchmark

    per_setting = args.rounds * args.requests * args.batch
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.rounds} rounds of {args.requests} requests "
        f"of {args.batch} new images per setting ({2 * per_setting} images in all)",
        flush=True,
    )
    fresh = iter(noise_pngs(2 * per_setting + 2 * args.batch, seed=1))
    with tempfile.TemporaryDirectory(prefix="labelwheel-bench-") as tmp_name:
        tmp = Path(tmp_name)
        write_images(tmp / "images", 500)
        project_id, _ = make_project(tmp / "data", tmp / "images")
        env = {
            **os.environ,
            "LABELWHEEL_DATA_DIR": str(tmp / "data"),
            "LABELWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
            "LABELWHEEL_EMBEDDED_WORKER": "false",
        }
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        times: dict[str, list[float]] = {"off": [], "on": []}
        with running_server(env, tmp / "server.log") as (_, base), httpx.Client(base_url=base, timeout=120) as http:
            url = f"/api/v1/projects/{project_id}"

            def monitoring(on: bool) -> None:
                settings = {"log_days": 30, "capture": "all"} if on else {"log_days": 0, "capture": "none"}
                done = http.patch(f"{url}/settings", json={"settings": {"monitoring": settings}}, headers=headers)
                done.raise_for_status()

            def request() -> float:
                files = [("files", (f"{i}.png", next(fresh), "image/png")) for i in range(args.batch)]
                started = time.perf_counter()
                response = http.post(f"{url}/predict", files=files, headers=headers)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                return elapsed

            for setting in ("off", "on"):  # warm up: the model's session, the first capture
                monitoring(setting == "on")
                request()
            for round_ in range(args.rounds):
                order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
                for setting in order:
                    monitoring(setting == "on")
                    times[setting].extend(request() for _ in range(args.requests))
                print(
                    f"round {round_ + 1}: median off {statistics.median(times['off']) * 1000:.1f} ms, "
                    f"on {statistics.median(times['on']) * 1000:.1f} ms",
                    flush=True,
                )
        rate = {setting: args.batch / statistics.median(values) for setting, values in times.items()}
        p99 = {setting: float(np.percentile(values, 99)) * 1000 for setting, values in times.items()}
        print(f"\n{'setting':<48}{'images/s':>10}{'p99 ms':>10}  ratio")
        print(f"{'off: no log, no capture':<48}{rate['off']:>10,.0f}{p99['off']:>10.1f}")
        ratio = rate["on"] / rate["off"]
        verdict = "PASS" if ratio >= TARGET else "MISS"
        print(
            f"{'on: log 30 days, capture all':<48}{rate['on']:>10,.0f}{p99['on']:>10.1f}  {ratio:.2f} {verdict} "
            f"(>= {TARGET})"
        )


if __name__ == "__main__":
    main()
