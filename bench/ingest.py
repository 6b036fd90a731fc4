"""Ingest benchmark: how fast labelwheel takes images in, and how much memory a big zip costs.

Ingest stores every image durably (content-addressed blob, thumbnail, database row), so its
speed is judged against the floor that durability sets on this machine: copying the same
files with one ``fsync`` per file. One run measures, against the real server and CLI:

* copy + fsync baseline, files/s (median of three runs: before, between and after the ingests);
* HTTP upload of 2,000 small PNGs in requests of 100, images/s and ratio to the baseline
  (target >= 0.3);
* ``labelwheel import`` of the same folder, raw wall time including interpreter start-up,
  images/s and ratio to the baseline (target >= 0.5); a second import must add nothing;
* the server's peak RSS while one ~200 MB zip of incompressible PNGs is uploaded in one
  request (target <= 250 MB, where MB is 10**6 bytes).

The server and the CLI run with bytecode caching on (see ``labelwheel_env``), as an installed
labelwheel would after its first run. Everything lives in a temporary directory, removed at the end.

Run ``.venv/bin/python bench/ingest.py`` (``--quick`` for a ~300-image, 30 MB smoke run).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from _memory import peak_rss_during
from PIL import Image
from sklearn.datasets import load_digits

from service.launcher import LABELWHEEL, running_server

MB = 1_000_000
BATCH = 100
TARGET_HTTP_RATIO = 0.3
TARGET_CLI_RATIO = 0.5
TARGET_PEAK_MB = 250
SUMMARY_RE = re.compile(r"(\d+) accepted, (\d+) duplicate, (\d+) rejected")


@dataclass(frozen=True)
class Plan:
    images: int
    zip_mb: int


FULL = Plan(images=2000, zip_mb=200)
QUICK = Plan(images=300, zip_mb=30)


# --- data ---------------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_digits(root: Path, count: int) -> list[Path]:
    """Write ``count`` digit PNGs as root/<label>/<i>.png; past 1,797, flipped copies of the first."""
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    labels = list(digits.target)
    extra = max(0, count - len(pixels))
    pixels = np.concatenate([pixels, pixels[:extra, :, ::-1]])[:count]
    labels = (labels + labels[:extra])[:count]
    paths = []
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        path = root / str(label) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(image))
        paths.append(path)
    assert len({p.read_bytes() for p in paths}) == count, "digit PNGs are not all distinct"
    return paths


def write_noise_zip(path: Path, megabytes: int) -> int:
    """A stored (uncompressed) zip of random-noise 512x512 RGB PNGs, about ``megabytes`` MB in all."""
    rng = np.random.default_rng(0)
    count = written = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        while written < megabytes * MB:
            data = png_bytes(rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8))
            archive.writestr(f"noise/{count}.png", data)
            written += len(data)
            count += 1
    return count


# --- baseline -----------------------------------------------------------------------------------


def copy_with_fsync(paths: list[Path], src_root: Path, dst_root: Path) -> float:
    """Copy every file with open/write/fsync/close; return files per second."""
    start = time.perf_counter()
    for path in paths:
        target = dst_root / path.relative_to(src_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(paths) / (time.perf_counter() - start)


# --- server -------------------------------------------------------------------------------------


def labelwheel_env(tmp: Path, token: str) -> dict[str, str]:
    """The environment shared by the server and the CLI runs.

    Bytecode is cached (under ``tmp``, so the checkout stays clean) even where the caller's
    environment sets PYTHONDONTWRITEBYTECODE: otherwise every CLI run would recompile its imports
    from source, and start-up would dominate what an installed labelwheel never pays twice.
    """
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(tmp / "server-data"),
        "LABELWHEEL_ADMIN_TOKEN": token,
        "LABELWHEEL_LOG_LEVEL": "WARNING",
        "LABELWHEEL_EMBEDDED_WORKER": "false",  # the API alone, as measured before the flywheel existed
        "PYTHONPYCACHEPREFIX": str(tmp / "pycache"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def create_project(client: httpx.Client, name: str) -> int:
    response = client.post("/api/v1/projects", json={"name": name, "labels": [str(d) for d in range(10)]})
    expect_status(response, 201)
    return response.json()["id"]


def expect_status(response: httpx.Response, code: int) -> None:
    if response.status_code != code:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} returned {response.status_code}, "
            f"expected {code}: {response.text[:2000]}"
        )


# --- measurements -------------------------------------------------------------------------------


def http_ingest(client: httpx.Client, project_id: int, paths: list[Path]) -> float:
    """Upload every path in sequential requests of BATCH files; return images per second."""
    accepted = 0
    start = time.perf_counter()
    for i in range(0, len(paths), BATCH):
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths[i : i + BATCH]]
        response = client.post(f"/api/v1/projects/{project_id}/images", files=files)
        expect_status(response, 201)
        accepted += response.json()["accepted"]
    elapsed = time.perf_counter() - start
    assert accepted == len(paths), f"HTTP ingest accepted {accepted} of {len(paths)}"
    return len(paths) / elapsed


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``labelwheel ARGS``; return its wall time and stdout, raising on a non-zero exit."""
    start = time.perf_counter()
    done = subprocess.run([LABELWHEEL, *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"labelwheel {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return elapsed, done.stdout


def cli_import(folder: Path, project: str, env: dict[str, str]) -> tuple[float, tuple[int, int, int]]:
    """Import the folder; return wall seconds and the (accepted, duplicate, rejected) it printed."""
    elapsed, stdout = run_cli(["import", str(folder), "--project", project], env)
    found = SUMMARY_RE.findall(stdout)
    if not found:
        raise RuntimeError(f"labelwheel import printed no summary line; stdout was:\n{stdout[-2000:]}")
    accepted, duplicate, rejected = map(int, found[-1])
    return elapsed, (accepted, duplicate, rejected)


def upload_zip(client: httpx.Client, project_id: int, path: Path, expected: int) -> None:
    with open(path, "rb") as stream:
        response = client.post(
            f"/api/v1/projects/{project_id}/images",
            files=[("files", ("big.zip", stream, "application/zip"))],
            timeout=600,
        )
    expect_status(response, 201)
    body = response.json()
    assert body["accepted"] == expected, f"zip upload accepted {body['accepted']} of {expected}: {body}"


# --- report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerResults:
    http_rate: float
    cli_seconds: float
    startup_seconds: float
    rss_before: int
    rss_peak: int


@dataclass(frozen=True)
class Results:
    images: int
    copy_rate: float
    zip_mb: float
    server: ServerResults


def verdict(ok: bool, target: str) -> str:
    return f"{'PASS' if ok else 'MISS'} ({target})"


def print_summary(r: Results) -> None:
    s = r.server
    http_ratio = s.http_rate / r.copy_rate
    cli_rate = r.images / s.cli_seconds
    cli_ratio = cli_rate / r.copy_rate
    warm_rate = r.images / max(s.cli_seconds - s.startup_seconds, 1e-9)
    rows = [
        ("copy+fsync, median of 3", f"{r.copy_rate:,.0f} files/s", ""),
        (f"HTTP ingest ({r.images} PNGs, {BATCH}/request)", f"{s.http_rate:,.0f} images/s", ""),
        ("  ratio to copy", f"{http_ratio:.2f}", verdict(http_ratio >= TARGET_HTTP_RATIO, f">= {TARGET_HTTP_RATIO}")),
        (f"CLI import, raw wall time {s.cli_seconds:.2f} s", f"{cli_rate:,.0f} images/s", ""),
        ("  ratio to copy", f"{cli_ratio:.2f}", verdict(cli_ratio >= TARGET_CLI_RATIO, f">= {TARGET_CLI_RATIO}")),
        (f"CLI import, less {s.startup_seconds:.2f} s start-up", f"{warm_rate:,.0f} images/s", ""),
        ("  ratio to copy", f"{warm_rate / r.copy_rate:.2f}", "(for information)"),
        ("server RSS before zip upload", f"{s.rss_before / MB:,.0f} MB", ""),
        (
            f"server RSS peak, {r.zip_mb:.0f} MB zip",
            f"{s.rss_peak / MB:,.0f} MB",
            verdict(s.rss_peak <= TARGET_PEAK_MB * MB, f"<= {TARGET_PEAK_MB} MB"),
        ),
    ]
    print()
    print(f"machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, Python {platform.python_version()}")
    width = max(len(name) for name, _, _ in rows)
    print(f"{'measure':<{width}}  {'value':>16}  result")
    for name, value, result in rows:
        print(f"{name:<{width}}  {value:>16}  {result}".rstrip())


# --- run ----------------------------------------------------------------------------------------


def against_server(
    tmp: Path, digits_dir: Path, paths: list[Path], zip_path: Path, zip_images: int, between: Callable[[], None]
) -> ServerResults:
    """Start the server and take the HTTP, CLI and memory measurements; stop it however that ends.

    ``between`` runs after the HTTP ingest, before the CLI import (an interleaved baseline run).
    """
    token = secrets.token_hex(16)
    env = labelwheel_env(tmp, token)
    with (
        running_server(env, tmp / "server.log") as (server, base),
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client,
    ):
        http_rate = http_ingest(client, create_project(client, "bench"), paths)
        print(f"HTTP ingest: {http_rate:,.0f} images/s")
        between()

        create_project(client, "bench-cli")
        startup_seconds, _ = run_cli(["--help"], env)
        cli_seconds, counts = cli_import(digits_dir, "bench-cli", env)
        assert counts == (len(paths), 0, 0), f"first import printed {counts}, expected all accepted"
        _, again = cli_import(digits_dir, "bench-cli", env)
        assert again == (0, len(paths), 0), f"second import printed {again}, expected all duplicate"
        print(f"CLI import: {cli_seconds:.2f} s; re-import printed {again[0]} accepted, {again[1]} duplicate")

        zip_project = create_project(client, "bench-zip")
        rss_before, rss_peak = peak_rss_during(
            server.pid, lambda: upload_zip(client, zip_project, zip_path, zip_images)
        )
        print(f"zip upload: {zip_images} accepted")
    return ServerResults(http_rate, cli_seconds, startup_seconds, rss_before, rss_peak)


def benchmark(plan: Plan, tmp: Path) -> Results:
    digits_dir = tmp / "digits"
    paths = write_digits(digits_dir, plan.images)
    print(f"wrote {len(paths)} digit PNGs")

    zip_path = tmp / "big.zip"
    zip_images = write_noise_zip(zip_path, plan.zip_mb)
    zip_mb = zip_path.stat().st_size / MB
    print(f"wrote {zip_mb:.0f} MB zip of {zip_images} noise PNGs")

    copy_rates: list[float] = []

    def copy_run() -> None:  # interleaved with the ingest runs, so the disk's drift hits both alike
        copy_rates.append(copy_with_fsync(paths, digits_dir, tmp / f"copy-{len(copy_rates)}"))
        print(f"copy+fsync run {len(copy_rates)}: {copy_rates[-1]:,.0f} files/s")

    copy_run()
    server = against_server(tmp, digits_dir, paths, zip_path, zip_images, between=copy_run)
    copy_run()
    return Results(len(paths), statistics.median(copy_rates), zip_mb, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~300 images and a 30 MB zip, for smoke checks")
    plan = QUICK if parser.parse_args().quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="labelwheel-bench-"))
    try:
        results = benchmark(plan, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_summary(results)


if __name__ == "__main__":
    main()
