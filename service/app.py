"""The FastAPI application factory: wires settings, database, blob store, routers and error handling."""

from __future__ import annotations

import gc
import importlib
import threading

from fastapi import FastAPI

from flywheel.jobs.transport import get_transport
from flywheel.labelstudio.events import EventQueue
from flywheel.policy import LabelNotifier
from flywheel.serving.inference import Predictor
from service.deps import Runtime
from service.errors import add_exception_handlers
from service.observability import RequestContextMiddleware
from service.routers import (
    exports,
    health,
    images,
    jobs,
    labeling,
    labelstudio,
    models,
    monitoring,
    overview,
    projects,
    quality,
    schedules,
    snapshots,
    users,
    webpage,
)
from storage.blobs import blob_store_from_settings
from storage.db import Database
from storage.migrate import upgrade
from storage.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, migrate: bool | None = None) -> FastAPI:
    """Build the app. The embedded default (SQLite) upgrades its own schema; at scale run `labelwheel db upgrade`."""
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate if migrate is not None else settings.uses_sqlite:
        upgrade(settings.resolved_database_url)
    blobs = blob_store_from_settings(settings)
    transport = get_transport(settings.resolved_queue_url)
    runtime = Runtime(
        settings=settings,
        db=Database(settings.resolved_database_url),
        blobs=blobs,
        transport=transport,
        notifier=LabelNotifier(transport),
        predictor=Predictor(blobs, retry_seconds=settings.model_retry_seconds),
    )

    app = FastAPI(
        title="labelwheel",
        version="0.1.0",
        summary="Image labeling and data-flywheel service",
        description="All endpoints but `/health` need `Authorization: Bearer <token>`.",
        # /docs is served from the package by service/routers/webpage.py: FastAPI's own pages load Swagger UI
        # and ReDoc from a CDN, blank without internet.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.runtime = runtime
    app.state.labelstudio_events = EventQueue()  # Label Studio's webhook events, applied after the answer
    add_exception_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    # Labeling first: a request is matched against each route in turn (~10 us each), and the labeling routes are
    # the ones annotators call for every label. No other route matches their paths (tests/test_app.py).
    for module in (
        labeling,
        health,
        users,
        projects,
        images,
        labelstudio,
        quality,
        exports,
        jobs,
        schedules,
        models,
        monitoring,
        overview,
        snapshots,
        webpage,
    ):
        app.include_router(module.router)
    return app


def create_worker_app() -> FastAPI:
    """The app of one `serve --workers N` process: settings from the environment, schema already upgraded."""
    from storage.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    app = create_app(settings, migrate=False)
    settle_heap()
    return app


# Imported when first used (they were half the start-up), then soon after start-up by ``settle_heap``'s thread: not
# by the first detection submission or consensus fit, under SQLite's write lock.
DEFERRED_IMPORTS = ("scipy.optimize", "scipy.sparse", "scipy.stats", "sklearn.metrics")


def settle_heap() -> threading.Thread:
    """Take the ~130k objects made at start-up, which live as long as the process, out of the collector's sight.

    A full collection then takes a few ms instead of ~70 ms that stall every request (bench/export.py). The
    deferred imports follow in a thread while the server starts answering, and their objects are frozen too.
    """
    gc.collect()
    gc.freeze()

    def import_the_rest() -> None:
        for name in DEFERRED_IMPORTS:
            importlib.import_module(name)
        gc.collect()
        gc.freeze()

    thread = threading.Thread(target=import_the_rest, name="deferred-imports", daemon=True)
    thread.start()
    return thread
