"""`labelwheel serve` and its port: a port another process holds is refused before anything starts (no
database upgrade, no job worker), and the URL is printed only once the server answers on it, so whoever
reads the URL (a person, a script) can use it at once."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable


def bind_error(host: str, port: int) -> OSError | None:
    """Bind the address as uvicorn will (same family, ``SO_REUSEADDR``) and let it go at once; the error if
    that fails (in use, not an address of this machine, a privileged port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def announce_when_answering(
    host: str, port: int, announce: Callable[[], None], *, stop: threading.Event
) -> threading.Thread:
    """Call ``announce`` from a daemon thread once ``GET /health`` gets any HTTP answer (with several API
    processes the port accepts connections before a process serves them), unless ``stop`` is set first."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)

    def poll() -> None:
        while not stop.is_set():
            connection = http.client.HTTPConnection(target, port, timeout=5)
            try:
                connection.request("GET", "/health")
                connection.getresponse().read()
            except (OSError, http.client.HTTPException):
                stop.wait(0.05)
                continue
            finally:
                connection.close()
            announce()
            return

    thread = threading.Thread(target=poll, name="announce-url", daemon=True)
    thread.start()
    return thread
