"""Run the real service as a child process: ``labelwheel serve`` on a free loopback port, ready once
``GET /health`` answers. Tests, benchmarks and scripts that drive the service over HTTP share it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

LABELWHEEL = str(Path(sys.executable).parent / "labelwheel")
LOG_TAIL_CHARS = 8000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    env: dict[str, str], log_path: Path, *, timeout: float = 60
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``labelwheel serve`` on a free loopback port with environment ``env``, logging to ``log_path``.

    Yields the process and its base URL once GET /health answers 200 (what it printed so far is in
    ``log_path``). If starting it or the body fails, the tail of the log goes to stderr; the server is
    stopped however the block ends.
    """
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [LABELWHEEL, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, base, timeout)
        yield process, base
    except BaseException:
        sys.stdout.flush()
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        sys.stderr.write(f"--- server log ({log_path}), last {LOG_TAIL_CHARS} chars ---\n{tail}\n")
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(process: subprocess.Popen[bytes], base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before becoming healthy")
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"GET /health did not return 200 within {timeout:.0f} s")
