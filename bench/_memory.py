"""Peak memory of a server process tree while a request runs, for the benchmarks that measure it.

Imported by the scripts as ``from _memory import ...`` (see ``_rows.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil


def rss_tree(process: psutil.Process) -> int:
    """Resident memory of a process and all its children, in bytes."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def peak_rss_during(pid: int, action: Callable[[], None], interval: float = 0.02) -> tuple[int, int]:
    """Run ``action`` while sampling the process tree's RSS; return (RSS before, peak RSS) in bytes."""
    process = psutil.Process(pid)
    before = rss_tree(process)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_tree(process))
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    return before, max(peak, rss_tree(process))
