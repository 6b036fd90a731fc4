"""Shared fixtures: a real database (SQLite file, and PostgreSQL when reachable), the app, users, projects.

Tests run on SQLite; those marked ``postgres`` (behaviour that can differ by dialect) on PostgreSQL too.
Tests that need a server (PostgreSQL, Redis, the S3 server process, Chromium) skip locally when it is
absent; CI sets ``LABELWHEEL_TEST_REQUIRE`` so the same absence fails the run instead of hiding.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from filelock import FileLock
from sqlalchemy import create_engine, make_url, text

from service.app import create_app
from service.launcher import free_port
from storage.migrate import upgrade
from storage.models import Base, Role
from storage.settings import Settings, load_settings
from tests.factories import Account, make_user

POSTGRES_URL = os.environ.get("LABELWHEEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRED = {name.strip() for name in os.environ.get("LABELWHEEL_TEST_REQUIRE", "").split(",") if name.strip()}


def unavailable(service: str, why: str) -> None:
    """Skip, or fail when CI made this service mandatory."""
    message = f"{service} is not available ({why})"
    if service in REQUIRED:
        pytest.fail(f"{message}, and LABELWHEEL_TEST_REQUIRE makes it mandatory")
    pytest.skip(f"{message}; set up {service} and LABELWHEEL_TEST_REQUIRE={service} to run this test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first, those running real worker processes (the longest) leading: ``./dev test`` hands tests to
    its processes one at a time, so the quick ones fill in around the slow ones instead of waiting behind them."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, "tests/test_worker.py" not in item.nodeid))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Keep the collector off the heap the imports made (torch, scikit-learn, every test module: ~335k objects,
    as service.app's ``settle_heap`` does for the server), and collect less often: each test makes apps, engines and
    sessions by the thousand objects, and full collections over it all took a quarter of tests/test_access.py."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests run on SQLite; those marked ``postgres`` run on PostgreSQL too (unless they choose themselves)."""
    if "database_url" not in metafunc.fixturenames:
        return
    chosen = any("database_url" in str(mark.args[0]) for mark in metafunc.definition.iter_markers("parametrize"))
    if not chosen:
        dialects = ["sqlite", "postgres"] if metafunc.definition.get_closest_marker("postgres") else ["sqlite"]
        metafunc.parametrize("database_url", dialects, indirect=True)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run (each xdist worker its own), migrated to head, dropped
    at the end."""
    admin_engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin_engine.connect() as connection:
            name = f"labelwheel_test_{uuid.uuid4().hex[:12]}"
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin_engine.dispose()
        unavailable("postgres", f"{POSTGRES_URL}: {type(exc).__name__}: {exc}".splitlines()[0])
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        with admin_engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head per test run; each test gets a copy (a copy takes a millisecond, a
    migration a second)."""
    path = tmp_path_factory.mktemp("template") / "labelwheel.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database of the test's own: a copy of the SQLite template, or PostgreSQL emptied first."""
    if getattr(request, "param", "sqlite") == "sqlite":
        path = tmp_path / "labelwheel.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_database")
    _truncate_postgres(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def app(settings: Settings):
    application = create_app(settings, migrate=False)  # database_url is migrated already
    yield application
    application.state.runtime.db.dispose()


@pytest.fixture
def client(app) -> TestClient:
    return TestClient(app)


@pytest.fixture
def admin(app) -> Account:
    return make_user(app, "root", Role.admin)


@pytest.fixture
def engineer(app) -> Account:
    return make_user(app, "eng", Role.engineer)


@pytest.fixture
def annotator(app) -> Account:
    return make_user(app, "ann", Role.annotator)


# The shared champion: good enough that its firm disagreements with a label mean something (mining), and quick.
CHAMPION_TRAINING = {"epochs": 15, "patience": 15, "batch_size": 16, "input_size": 16, "auto_train": False}


@dataclass
class Trained:
    """A digits project of 300 images, 150 of them labeled by ``annotator``, and its first champion."""

    app: FastAPI
    client: TestClient
    admin: Account
    engineer: Account
    annotator: Account
    project: dict
    truth: dict[int, str]
    train_job_id: int
    champion_id: int


def _embedded(root: Path) -> Settings:
    return load_settings(data_dir=root / "data", database_url=f"sqlite:///{root / 'labelwheel.db'}")


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> tuple[Path, dict]:
    """The database and blob folder of a ``Trained`` project, built once per test run: the first test process
    to need it trains it, the others wait on a file lock and reuse it."""
    root, made = _built_once(tmp_path_factory, "trained", lambda root: _train_template(root, sqlite_template))
    truth = {int(image_id): label for image_id, label in made["truth"].items()}
    return root, {**made, "truth": truth}


def _built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict]
) -> tuple[Path, dict]:
    """A folder made by ``build`` once per test run, and what ``build`` returned (its accounts as ``Account``s)."""
    # Common to all xdist workers of this run (their parent folder); one process keeps it in its own.
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, made_file = shared / name, shared / f"{name}.json"
    with FileLock(shared / f"{name}.lock"):
        if not made_file.exists():
            made_file.write_text(json.dumps(build(root)))
    made = json.loads(made_file.read_text())
    return root, {**made, **{role: Account(**made[role]) for role in ("admin", "engineer", "annotator")}}


def _template_app(root: Path, sqlite_template: Path) -> tuple[FastAPI, TestClient, Account, Account, Account]:
    """A fresh app on a copy of the migrated database in ``root``, with an admin, an engineer and an annotator."""
    root.mkdir()
    shutil.copyfile(sqlite_template, root / "labelwheel.db")
    app = create_app(_embedded(root), migrate=False)
    admin, engineer = make_user(app, "root", Role.admin), make_user(app, "eng", Role.engineer)
    return app, TestClient(app), admin, engineer, make_user(app, "ann", Role.annotator)


def _train_template(root: Path, sqlite_template: Path) -> dict:
    from tests.digits import digit_project, label_digits
    from tests.jobs import run

    app, client, admin, engineer, annotator = _template_app(root, sqlite_template)
    project, truth = digit_project(client, admin, engineer, annotator, count=300, training=CHAMPION_TRAINING)
    label_digits(client, project, annotator, truth, 150)
    created = client.post(f"/api/v1/projects/{project['id']}/jobs", json={"kind": "train"}, headers=engineer.headers)
    job_id = created.json()["id"]
    run(app, job_id)
    done = client.get(f"/api/v1/jobs/{job_id}", headers=engineer.headers).json()
    assert done["status"] == "succeeded" and done["result"]["promoted"], done
    app.state.runtime.db.dispose()
    accounts = {"admin": asdict(admin), "engineer": asdict(engineer), "annotator": asdict(annotator)}
    return {
        **accounts,
        "project": project,
        "truth": truth,
        "train_job_id": job_id,
        "champion_id": done["result"]["model_id"],
    }


@pytest.fixture
def trained(trained_template: tuple[Path, dict], tmp_path: Path) -> Iterator[Trained]:
    """A copy of the shared trained project, the test's own to change (a copy takes milliseconds, a training
    seconds)."""
    template, made = trained_template
    root = tmp_path / "trained"
    shutil.copytree(template, root)
    app = create_app(_embedded(root), migrate=False)
    yield Trained(app=app, client=TestClient(app), **made)
    app.state.runtime.db.dispose()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's S3 server as a separate process on a loopback port: a real HTTP S3 API, no patched client."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                unavailable("s3", f"moto server did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
def redis_url(worker_id):
    """A Redis database of this test process's own (xdist workers gw0, gw1, ... get 1, 2, ...), emptied."""
    import redis

    db = 1 + (int(worker_id.removeprefix("gw")) if worker_id.startswith("gw") else 0) % 15
    connection = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    try:
        connection.ping()
    except redis.RedisError as exc:
        unavailable("redis", f"{REDIS_HOST}:{REDIS_PORT}: {exc}")
    connection.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    connection.flushdb()
    connection.close()


# The shared detector: 80 tiny scenes of squares and discs (64 px), their boxes drawn through the API, one
# training of a few seconds. Good enough to find the shapes, which pre-labels and /predict show.
DETECTOR_TRAINING = {"epochs": 3, "min_epoch_images": 384, "batch_size": 16, "auto_train": False, "min_labels": 10}


@dataclass
class TrainedDetector:
    """A detection project of 80 scenes, 64 of them answered by ``annotator`` with their true boxes, 16 left
    unlabeled, and its first champion."""

    app: FastAPI
    client: TestClient
    admin: Account
    engineer: Account
    annotator: Account
    project: dict
    truth: dict[int, list[dict]]
    train_job_id: int
    champion_id: int


def _train_detector_template(root: Path, sqlite_template: Path) -> dict:
    from tests.factories import make_project
    from tests.jobs import run
    from tests.shapes import SHAPE_LABELS, scenes

    app, client, admin, engineer, annotator = _template_app(root, sqlite_template)
    settings = {"overlap_rate": 0.0, "gold_rate": 0.0, "training": DETECTOR_TRAINING}
    project = make_project(
        client, admin, engineer, annotator, labels=SHAPE_LABELS, task_type="detection", settings=settings
    )
    drawn = scenes(80, seed=7)
    files = [("files", (f"s{i}.png", png, "image/png")) for i, (png, _) in enumerate(drawn)]
    uploaded = client.post(f"/api/v1/projects/{project['id']}/images", files=files, headers=admin.headers)
    assert uploaded.status_code == 201, uploaded.text
    truth = {f["image_id"]: boxes for f, (_, boxes) in zip(uploaded.json()["files"], drawn, strict=True)}
    for _ in range(64):
        task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers).json()
        body = {"image_id": task["image_id"], "boxes": truth[task["image_id"]]}
        answered = client.post(f"/api/v1/projects/{project['id']}/annotations", json=body, headers=annotator.headers)
        assert answered.status_code == 201, answered.text
    created = client.post(f"/api/v1/projects/{project['id']}/jobs", json={"kind": "train"}, headers=engineer.headers)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    run(app, job_id)
    done = client.get(f"/api/v1/jobs/{job_id}", headers=engineer.headers).json()
    assert done["status"] == "succeeded" and done["result"]["promoted"], done
    app.state.runtime.db.dispose()
    accounts = {"admin": asdict(admin), "engineer": asdict(engineer), "annotator": asdict(annotator)}
    truth_json = {str(k): v for k, v in truth.items()}
    return {
        **accounts,
        "project": project,
        "truth": truth_json,
        "train_job_id": job_id,
        "champion_id": done["result"]["model_id"],
    }


@pytest.fixture(scope="session")
def detector_template(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> tuple[Path, dict]:
    """The database and blob folder of a ``TrainedDetector``, built once per test run (as ``trained_template``)."""
    root, made = _built_once(tmp_path_factory, "detector", lambda root: _train_detector_template(root, sqlite_template))
    truth = {int(image_id): boxes for image_id, boxes in made["truth"].items()}
    return root, {**made, "truth": truth}


@pytest.fixture
def detector(detector_template: tuple[Path, dict], tmp_path: Path) -> Iterator[TrainedDetector]:
    """A copy of the shared detection project and its champion, the test's own to change."""
    template, made = detector_template
    root = tmp_path / "detector"
    shutil.copytree(template, root)
    app = create_app(_embedded(root), migrate=False)
    yield TrainedDetector(app=app, client=TestClient(app), **made)
    app.state.runtime.db.dispose()
