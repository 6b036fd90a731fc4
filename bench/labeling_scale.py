"""Labeling at scale: the server's CPU per label, one round trip against two calls, and 1 vs 2 API processes.

Sixteen annotators label through real ``labelwheel serve`` processes over loopback, on SQLite, then on
PostgreSQL when it is reachable. Each runs the same 16 annotators for ``--seconds`` in each mode:

* two calls per label (``GET .../tasks/next``, then ``POST .../annotations``) and one round trip
  (``POST .../annotations?next=true``), SQLite and PostgreSQL: labels/s, p50/p99 of a label's requests,
  and the server's CPU per label (the API process's CPU seconds over the run, over the labels stored);
  targets: <= 3 ms of server CPU per label in one round trip, and on SQLite >= 200 labels/s at p99 <= 100 ms;
* PostgreSQL, one round trip, 1 API process, then 2 (annotators split between them), in the same run;
* the floor, in the same run: the same annotators against a bare FastAPI app under uvicorn whose one route validates
  the body and stores it with one SQLite INSERT (``bench/_floor_app.py``), pinned as the SQLite API process is: its
  CPU per request, and a label's server CPU as a multiple of it (a ratio that a busy machine moves less than either).

The load generator is one asyncio process writing HTTP/1.1 by hand on keep-alive connections (a few hundred
microseconds of CPU per request, against a millisecond or more for a thread per annotator with httpx). On SQLite
the API process is pinned to one core and the load generator to another (``sched_setaffinity``, what ``taskset``
does), so the generator cannot starve the server; its own CPU share (cores) is printed beside the server's. On
PostgreSQL nothing is pinned: the database's processes need the cores too. Each mode runs ``--repeats`` times;
medians are printed. Every acknowledged label is checked against the table afterwards (``bench/labeling.py``'s
count check). The SQLite rate is bounded by one fsync per label (``synchronous=FULL``, under the write lock):
the fsync time of the data directory's disk is measured and printed with the bound it implies.

Run ``.venv/bin/python bench/labeling_scale.py`` (``--quick``: 8 s per mode, once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
from labeling import (
    ANNOTATORS,
    CONCURRENT_SETTINGS,
    count_check,
    create_annotators,
    create_project,
    insert_images,
    p50,
    p99,
    postgres_database,
)

from service.launcher import free_port, running_server, wait_healthy
from storage.migrate import upgrade

LABELS = [str(d) for d in range(10)]
TARGET_CPU_MS = 3.0
TARGET_RATE = 200
TARGET_P99_MS = 100
WARMUP_LABELS = 3


class Connection:
    """One keep-alive HTTP/1.1 connection that writes requests by hand and reads JSON answers."""

    def __init__(self, base: str, token: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.auth = f"Authorization: Bearer {token}\r\nHost: {self.host}:{self.port}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None, key: str | None = None):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\n{self.auth}Content-Length: {len(payload)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        if key is not None:
            head += f"Idempotency-Key: {key}\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        headers = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(headers[0].split(" ", 2)[1])
        length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
        data = await self.reader.readexactly(length) if length else b""
        return status, (json.loads(data) if data else None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Annotator:
    """One annotator's connection, the task it holds, and what it saw."""

    connection: Connection
    project: int
    rng: random.Random
    task: dict | None = None
    label_ms: list[float] = field(default_factory=list)  # all the requests of one label, end to end
    acknowledged: set[int] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)

    async def label(self, *, one_trip: bool) -> None:
        start = time.perf_counter()
        api = f"/api/v1/projects/{self.project}"
        if self.task is None or not one_trip:
            status, self.task = await self.connection.request("GET", f"{api}/tasks/next")
            if status != 200:
                self.unexpected.append(f"next {status}")
                self.task = None
                return
        assert self.task is not None
        body = {"image_id": self.task["image_id"], "label": self.rng.choice(LABELS), "duration_ms": 900}
        path = f"{api}/annotations?next=true" if one_trip else f"{api}/annotations"
        status, answer = await self.connection.request("POST", path, body, key=uuid.uuid4().hex)
        if status != 201:
            self.unexpected.append(f"submit {status}: {str(answer)[:200]}")
            self.task = None
            return
        self.label_ms.append((time.perf_counter() - start) * 1000)
        self.acknowledged.add(answer["annotation"]["id"] if one_trip else answer["id"])
        self.task = answer["next_task"] if one_trip else None


@dataclass(frozen=True)
class Run:
    mode: str
    processes: int
    labels: int
    seconds: float
    label_ms: list[float]
    server_cpu_s: float
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.labels / self.seconds

    @property
    def server_ms_per_label(self) -> float:
        return self.server_cpu_s * 1000 / self.labels

    @property
    def client_ms_per_label(self) -> float:
        return self.client_cpu_s * 1000 / self.labels

    def line(self, name: str) -> str:
        return (
            f"[{name}] {self.mode:<14} {self.processes} API process(es): {self.rate:6,.0f} labels/s, label "
            f"p50/p99 {p50(self.label_ms):.1f}/{p99(self.label_ms):.1f} ms, server CPU "
            f"{self.server_ms_per_label:.2f} ms/label ({self.server_cpu_s / self.seconds:.2f} cores), load "
            f"generator CPU {self.client_ms_per_label:.2f} ms/label ({self.client_cpu_s / self.seconds:.2f} cores)"
        )


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


async def _run(bases: list[str], tokens: list[str], project: int, seconds: float, one_trip: bool, seed: int):
    annotators = [
        Annotator(Connection(bases[i % len(bases)], token), project, random.Random(seed + i))
        for i, token in enumerate(tokens)
    ]
    try:
        for _ in range(WARMUP_LABELS):  # connections open, caches warm, a task held
            await asyncio.gather(*(a.label(one_trip=one_trip) for a in annotators))
        warm = [set(a.acknowledged) for a in annotators]
        for a in annotators:
            a.label_ms.clear()
        deadline = time.perf_counter() + seconds

        async def work(a: Annotator) -> None:
            while time.perf_counter() < deadline:
                await a.label(one_trip=one_trip)

        start = time.perf_counter()
        await asyncio.gather(*(work(a) for a in annotators))
        return annotators, warm, time.perf_counter() - start
    finally:
        for a in annotators:
            a.connection.close()


def run_mode(
    servers: list[tuple[psutil.Process, str]], tokens: list[str], project: int, seconds: float, *, one_trip: bool
) -> tuple[Run, set[int], list[str]]:
    """The annotators for ``seconds`` in one mode; returns the run, every acknowledged id, unexpected answers."""
    processes = [p for p, _ in servers]
    before, client_before = cpu_seconds(processes), time.process_time()
    annotators, warm, elapsed = asyncio.run(
        _run([b for _, b in servers], tokens, project, seconds, one_trip, seed=1 if one_trip else 2)
    )
    # The warm-up's CPU is in the totals; take it out pro rata to keep "per label" honest.
    server_cpu, client_cpu = cpu_seconds(processes) - before, time.process_time() - client_before
    timed = sum(len(a.acknowledged) for a in annotators) - sum(len(w) for w in warm)
    total = sum(len(a.acknowledged) for a in annotators)
    share = timed / total if total else 0.0
    run = Run(
        mode="one round trip" if one_trip else "two calls",
        processes=len(servers),
        labels=timed,
        seconds=elapsed,
        label_ms=[ms for a in annotators for ms in a.label_ms],
        server_cpu_s=server_cpu * share,
        client_cpu_s=client_cpu * share,
    )
    return run, set().union(*(a.acknowledged for a in annotators)), [u for a in annotators for u in a.unexpected]


@contextmanager
def api_processes(
    tmp: Path, database_url: str, count: int, *, pin: int | None = None
) -> Iterator[list[tuple[psutil.Process, str]]]:
    """``count`` ``labelwheel serve`` processes (no job worker) on one database; the admin token is ``tmp``'s.
    ``pin``: the core they run on (the load generator then keeps to the others)."""
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(tmp / "data"),
        "LABELWHEEL_DATABASE_URL": database_url,
        "LABELWHEEL_ADMIN_TOKEN": admin_token(tmp),
        "LABELWHEEL_LOG_LEVEL": "WARNING",
        "LABELWHEEL_EMBEDDED_WORKER": "false",
    }
    tmp.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        started = [stack.enter_context(running_server(env, tmp / f"server{i}.log")) for i in range(count)]
        servers = [(psutil.Process(process.pid), base) for process, base in started]
        mine = os.sched_getaffinity(0)
        if pin is not None:
            for process, _ in servers:
                process.cpu_affinity([pin])
            os.sched_setaffinity(0, mine - {pin} or mine)
        try:
            yield servers
        finally:
            os.sched_setaffinity(0, mine)


def admin_token(tmp: Path) -> str:
    path = tmp / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
    return path.read_text()


def median_run(runs: list[Run]) -> Run:
    """The run with the median rate, its CPU per label replaced by the median over the runs."""
    ordered = sorted(runs, key=lambda r: r.rate)
    middle = ordered[len(ordered) // 2]
    server = statistics.median(r.server_ms_per_label for r in runs) * middle.labels / 1000
    client = statistics.median(r.client_ms_per_label for r in runs) * middle.labels / 1000
    return Run(middle.mode, middle.processes, middle.labels, middle.seconds, middle.label_ms, server, client)


def measure(name: str, url: str, seconds: float, repeats: int, tmp: Path, *, scale_out: bool) -> list[Run]:
    """Two calls, then one round trip (each ``repeats`` times, alternating), on one API process; on PostgreSQL then
    one round trip on two. Returns the median run of each."""
    upgrade(url)
    acknowledged: set[int] = set()
    unexpected: list[str] = []
    pin = None if scale_out else 0
    modes: dict[str, list[Run]] = {"two": [], "one": [], "two processes": []}

    def record(key: str, result: tuple[Run, set[int], list[str]]) -> None:
        run, acked, odd = result
        modes[key].append(run)
        acknowledged.update(acked)
        unexpected.extend(odd)
        print(run.line(name), flush=True)

    with api_processes(tmp, url, 1, pin=pin) as servers:
        with httpx.Client(base_url=servers[0][1], headers={"Authorization": f"Bearer {admin_token(tmp)}"}) as admin:
            annotators = create_annotators(admin, ANNOTATORS)
            project = create_project(admin, "scale", CONCURRENT_SETTINGS, [a for a, _ in annotators])
        images = int(seconds * repeats * 600 * (3 if scale_out else 2)) + 5_000
        took = insert_images(url, project_id=project, count=images, settings=CONCURRENT_SETTINGS, seed=3)
        print(
            f"[{name}] inserted {images:,} waiting images in {took:.1f} s"
            + (
                ""
                if pin is None
                else (f"; API process pinned to core {pin}, load generator to {sorted(os.sched_getaffinity(0))}")
            )
        )
        tokens = [token for _, token in annotators]
        for _ in range(repeats):
            for one_trip in (False, True):
                record("one" if one_trip else "two", run_mode(servers, tokens, project, seconds, one_trip=one_trip))
    if scale_out:
        with api_processes(tmp, url, 2) as servers:
            for _ in range(repeats):
                record("two processes", run_mode(servers, tokens, project, seconds, one_trip=True))
    check = count_check(url, project_id=project, acknowledged=acknowledged)
    print(f"[{name}] count check: {check}; unexpected answers: {len(unexpected)} {unexpected[:3]}")
    if not check.ok or unexpected:
        raise SystemExit(f"[{name}] labels lost, doubled or refused: {check}")
    return [median_run(runs) for runs in modes.values() if runs]


@contextmanager
def floor_process(tmp: Path, *, pin: int) -> Iterator[list[tuple[psutil.Process, str]]]:
    """``bench/_floor_app.py`` under uvicorn on a free port, pinned to core ``pin`` (the load generator elsewhere)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(tmp / "floor.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent), "_floor_app:app"]
            + ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
            env={**os.environ, "FLOOR_DATABASE": str(tmp / "floor.db")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    mine = os.sched_getaffinity(0)
    try:
        wait_healthy(process, base, 60)
        server = psutil.Process(process.pid)
        server.cpu_affinity([pin])
        os.sched_setaffinity(0, mine - {pin} or mine)
        yield [(server, base)]
    finally:
        os.sched_setaffinity(0, mine)
        process.terminate()
        process.wait(timeout=30)


def measure_floor(seconds: float, repeats: int, tmp: Path) -> Run:
    """The floor's median run: the same annotators and load generator, one round trip each, against the bare app."""
    runs = []
    with floor_process(tmp, pin=0) as servers:
        for _ in range(repeats):
            run, _, unexpected = run_mode(servers, ["floor"] * ANNOTATORS, 1, seconds, one_trip=True)
            if unexpected:
                raise SystemExit(f"[floor] unexpected answers: {unexpected[:3]}")
            runs.append(replace(run, mode="floor"))
            print(runs[-1].line("floor"), flush=True)
    return median_run(runs)


def fsync_ms(directory: Path, times: int = 50) -> float:
    """The median time of a 4 KiB write and fsync in ``directory``: what one SQLite commit waits for at least."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe"
    took = []
    with open(path, "wb") as probe:
        for _ in range(times):
            start = time.perf_counter()
            probe.write(b"x" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
            took.append((time.perf_counter() - start) * 1000)
    path.unlink()
    return statistics.median(took)


def print_summary(results: dict[str, list[Run]], floor: Run, seconds: float, repeats: int, fsync: float) -> None:
    print()
    print(
        f"machine: {os.cpu_count()} CPUs (nproc), {platform.platform()}, Python {platform.python_version()}; "
        f"{ANNOTATORS} annotators, {seconds:.0f} s per mode, median of {repeats}, one load-generator process; "
        "a shared machine: other work on it shows in these numbers"
    )
    floor_ms = floor.server_ms_per_label
    print(
        f"floor (bare FastAPI app, one SQLite INSERT per request, same load): {floor_ms:.2f} ms of server CPU per "
        f"request, {floor.rate:,.0f} requests/s"
    )
    for name, runs in results.items():
        two, one = runs[0], runs[1]
        cpu_ok = one.server_ms_per_label <= TARGET_CPU_MS
        print(
            f"{name}: server CPU per label {two.server_ms_per_label:.2f} ms (two calls) -> "
            f"{one.server_ms_per_label:.2f} ms (one round trip), ratio "
            f"{one.server_ms_per_label / two.server_ms_per_label:.2f}; "
            f"target <= {TARGET_CPU_MS} ms: {'PASS' if cpu_ok else 'MISS'}; {one.server_ms_per_label / floor_ms:.1f} x "
            f"the floor's {floor_ms:.2f} ms per request"
        )
        print(
            f"{name}: labels/s {two.rate:,.0f} -> {one.rate:,.0f} (x{one.rate / two.rate:.2f}); label p99 "
            f"{p99(two.label_ms):.1f} -> {p99(one.label_ms):.1f} ms"
        )
        if name == "SQLite":
            ok = one.rate >= TARGET_RATE and p99(one.label_ms) <= TARGET_P99_MS
            print(
                f"{name}: one round trip {one.rate:,.0f} labels/s at p99 {p99(one.label_ms):.1f} ms (API process on "
                f"its own core, load generator at {one.client_cpu_s / one.seconds:.2f} cores on the other); target >= "
                f"{TARGET_RATE} at p99 <= {TARGET_P99_MS} ms: {'PASS' if ok else 'MISS'}"
            )
            print(
                f"{name}: one fsync (synchronous=FULL, one per label, under the write lock) takes {fsync:.2f} ms "
                f"here: at most {1000 / fsync:,.0f} labels/s before any CPU"
            )
        if len(runs) > 2:
            print(
                f"{name}: one round trip, 1 API process {one.rate:,.0f} labels/s -> 2 processes {runs[2].rate:,.0f} "
                f"(x{runs[2].rate / one.rate:.2f}; {os.cpu_count()} cores shared with the load generator and the "
                "database)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 s per mode, once")
    parser.add_argument("--seconds", type=float, help="length of each mode (default 20, quick 8)")
    parser.add_argument("--repeats", type=int, help="runs of each mode, medians printed (default 3, quick 1)")
    args = parser.parse_args()
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    repeats = args.repeats or (1 if args.quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="labelwheel-bench-scale-"))
    results: dict[str, list[Run]] = {}
    try:
        sqlite_url = f"sqlite:///{tmp / 'sqlite' / 'labelwheel.db'}"
        fsync = fsync_ms(tmp / "sqlite")
        results["SQLite"] = measure("SQLite", sqlite_url, seconds, repeats, tmp / "sqlite", scale_out=False)
        floor = measure_floor(seconds, repeats, tmp / "floor")
        with postgres_database() as url:
            if url is not None:
                results["PostgreSQL"] = measure("PostgreSQL", url, seconds, repeats, tmp / "postgres", scale_out=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_summary(results, floor, seconds, repeats, fsync)


if __name__ == "__main__":
    main()
