"""Typed FastAPI dependencies: the runtime, a request session, and the calling user."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from flywheel.jobs.transport import Transport
from flywheel.policy import LabelNotifier
from flywheel.serving.inference import Predictor
from storage.blobs import BlobStore
from storage.db import Database
from storage.ingest import Limits
from storage.settings import Settings
from storage.users import Principal, authenticate


@dataclass
class Runtime:
    """What the app holds for its lifetime: settings, stores, the job transport and the model predictor."""

    settings: Settings
    db: Database
    blobs: BlobStore
    transport: Transport
    notifier: LabelNotifier
    predictor: Predictor

    @property
    def limits(self) -> Limits:
        return Limits.from_settings(self.settings)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """A session whose transaction commits before the response is sent: a 2xx means it is stored."""
    with runtime.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_read_session(runtime: RuntimeDep) -> Iterator[Session]:
    """For routes that only read: on SQLite it neither takes nor waits for the write lock."""
    with runtime.db.read_session() as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API token from `labelwheel users create`.")


def get_principal(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    # A short read-only session of its own, so a long request (an upload) holds no transaction while it works.
    with runtime.db.read_session() as session:
        return authenticate(session, token=credentials.credentials if credentials else None)


CurrentUser = Annotated[Principal, Depends(get_principal)]
