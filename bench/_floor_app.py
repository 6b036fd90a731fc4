"""The floor ``bench/labeling_scale.py`` compares a label's server CPU with: a bare FastAPI app, served by uvicorn as
labelwheel is, whose one route validates a label's body and stores it with one SQLite INSERT (WAL, synchronous=FULL,
``BEGIN IMMEDIATE``, one writer at a time), then answers a small JSON. No auth, no queue, no SQLAlchemy.

Run by the benchmark as ``python -m uvicorn --app-dir bench _floor_app:app`` with ``FLOOR_DATABASE`` set.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
_local = threading.local()
_writer = threading.Lock()


class Label(BaseModel):
    image_id: int
    label: str
    duration_ms: int | None = None


def _connection() -> sqlite3.Connection:
    connection: sqlite3.Connection | None = getattr(_local, "connection", None)
    if connection is None:
        connection = _local.connection = sqlite3.connect(os.environ["FLOOR_DATABASE"], isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE IF NOT EXISTS labels (id INTEGER PRIMARY KEY, image_id INT, label TEXT)")
    return connection


@app.get("/health")
def health() -> dict:
    return {}


@app.get("/api/v1/projects/{project_id}/tasks/next")
def first_task(project_id: int) -> dict:
    """Where the benchmark's annotators start; each answer then names the next image."""
    return {"image_id": 1}


@app.post("/api/v1/projects/{project_id}/annotations", status_code=201)
def store(project_id: int, body: Label) -> dict:
    connection = _connection()
    with _writer:
        connection.execute("BEGIN IMMEDIATE")
        stored = connection.execute("INSERT INTO labels (image_id, label) VALUES (?, ?)", (body.image_id, body.label))
        connection.execute("COMMIT")
    return {"annotation": {"id": stored.lastrowid}, "next_task": {"image_id": body.image_id + 1}}
