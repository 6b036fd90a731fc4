"""The client's HTTP layer: one httpx connection pool with the token, retries with backoff, and every refusal of
the server as one exception carrying the API's error code and message."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

RETRY_STATUS = 503  # the service's "a store it needs refuses to work": nothing was done, sending again is safe
MAX_RETRY_AFTER = 30.0


class ApiError(Exception):
    """The server refused a request (``status``, the API's ``code``, ``message`` and ``details``), or could not be
    reached at all (``status`` None, ``code`` ``unreachable``)."""

    def __init__(self, status: int | None, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_of(response: httpx.Response) -> ApiError:
    """The API's JSON error, or for an answer that is not one (a proxy's page), its status and first words."""
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"], error.get("details"))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().replace("\n", " ")[:200] or response.reason_phrase
        return ApiError(response.status_code, f"http_{response.status_code}", text)


class Http:
    """Requests to one server. A request is sent again, after a growing pause, when the server could not be
    reached, answered 503, or (for a request that is safe to repeat) the connection broke before the answer."""

    def __init__(self, url: str, token: str, *, timeout: float, retries: int, backoff: float) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "labelwheel-client"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        repeatable: bool,
        ok: tuple[int, ...] = (200, 201),
        body: Callable[[], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send until answered with a status in ``ok`` (returned) or anything else (raised as ApiError).

        ``repeatable``: the request changes nothing when sent twice (a read, an upload the server deduplicates, a
        submission with an Idempotency-Key). ``body`` builds the request's content afresh for each attempt (files
        to read again from their start)."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._client.request(method, path, **kwargs, **(body() if body else {}))
            except httpx.TransportError as exc:
                if last or not (repeatable or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)):
                    raise self._unreachable(exc, attempt + 1) from exc
                self.pause(attempt)
                continue
            if response.status_code == RETRY_STATUS and not last:
                self.pause(attempt, response.headers.get("Retry-After"))
                continue
            if response.status_code not in ok:
                raise error_of(response)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A 200 answer whose body is read as it arrives; retried like a read until the answer starts (a break
        in the body is the caller's to resume)."""
        for attempt in range(self.retries + 1):
            try:
                response = self._client.send(self._client.build_request(method, path, **kwargs), stream=True)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise self._unreachable(exc, attempt + 1) from exc
                self.pause(attempt)
                continue
            if response.status_code == RETRY_STATUS and attempt < self.retries:
                response.close()
                self.pause(attempt, response.headers.get("Retry-After"))
                continue
            try:
                if response.status_code != 200:
                    response.read()
                    raise error_of(response)
                yield response
                return
            finally:
                response.close()

    def pause(self, attempt: int, retry_after: str | None = None) -> None:
        """Exponential backoff with jitter, so many clients retrying do not arrive together; the server's
        Retry-After (in seconds) when it gives one."""
        if retry_after is not None and retry_after.isdigit():
            time.sleep(min(float(retry_after), MAX_RETRY_AFTER))
        else:
            time.sleep(self.backoff * 2**attempt * random.uniform(0.5, 1.0))

    def _unreachable(self, exc: httpx.TransportError, attempts: int) -> ApiError:
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            hint = "is the server running there, and is the URL right?"
        else:  # sent, then the connection broke or timed out
            hint = "the request may or may not have taken effect: check before sending it again"
        return ApiError(None, "unreachable", f"no answer from {self.url} after {attempts} attempt(s) ({what}); {hint}")
