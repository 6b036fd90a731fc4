"""A stand-in for a Label Studio server's file serving on a loopback port: paths to bytes, redirects, and a log
of every request, to show what labelwheel fetched (and that it fetched nothing elsewhere)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FileHost:
    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization header)


@contextmanager
def file_host() -> Iterator[FileHost]:
    host = FileHost(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            host.requests.append((self.path, self.headers.get("Authorization")))
            if self.path in host.redirects:
                self.send_response(302)
                self.send_header("Location", host.redirects[self.path])
                self.end_headers()
            elif self.path in host.files:
                body = host.files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()
