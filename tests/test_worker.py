"""The flywheel with real processes: `labelwheel serve` and its worker, `labelwheel worker` on SQLite's queue
and on Redis, and a worker killed with SIGKILL in the middle of a training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta

import httpx
import pytest

from service.launcher import LABELWHEEL, running_server
from storage.models import Role
from tests.conftest import unavailable
from tests.digits import digit_project, label_digits
from tests.factories import Account

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "worker-test-admin-token-0123456789"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
def env(tmp_path, database_url):
    return {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(tmp_path / "data"),
        "LABELWHEEL_DATABASE_URL": database_url,
        "LABELWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
        "LABELWHEEL_JOB_STALE_SECONDS": "20",
    }


def account(client: httpx.Client, admin: Account, name: str, role: Role) -> Account:
    created = client.post("/api/v1/users", json={"name": name, "role": role.value}, headers=admin.headers)
    assert created.status_code == 201, created.text
    body = created.json()
    return Account(body["id"], name, role, body["token"])


def team(client: httpx.Client) -> tuple[Account, Account, Account]:
    admin = Account(0, "admin", Role.admin, ADMIN_TOKEN)
    return admin, account(client, admin, "eng", Role.engineer), account(client, admin, "ann", Role.annotator)


def wait_for(condition, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def full_models(client, project, engineer) -> list[dict]:
    models = client.get(f"/api/v1/projects/{project['id']}/models", headers=engineer.headers).json()
    return [m for m in models if m["kind"] == "full"]


def predict(client, project, engineer) -> dict:
    from tests.digits import digits

    png = digits()[0][0]
    response = client.post(
        f"/api/v1/projects/{project['id']}/predict",
        files=[("files", ("x.png", png, "image/png"))],
        headers=engineer.headers,
    )
    return response.json() if response.status_code == 200 else {}


def test_labels_alone_produce_a_champion_then_a_refresh_then_a_second_model_and_serve_stops_its_worker(env, tmp_path):
    """The embedded default end to end. Meanwhile huey's real minute tick starts a schedule that fell due (the
    one test that waits for the clock; run_due_schedules itself is tested without it in tests/test_mining.py)."""
    import psutil

    # Training waits 3 s for labels to settle, so the first one sees all 150 labels given at once.
    policy = {"min_new_labels": 100, "epochs": 8, "patience": 8, "debounce_seconds": 3}
    with (
        running_server(env, tmp_path / "server.log") as (server, base),
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        worker = wait_for(lambda: psutil.Process(server.pid).children(), timeout=30, what="the worker")[0]
        lanes = wait_for(lambda: worker.children(), timeout=60, what="the lane processes")
        admin, engineer, annotator = team(client)
        project, truth = digit_project(client, admin, engineer, annotator, count=400, training=policy)
        schedules = f"/api/v1/projects/{project['id']}/schedules"
        assert client.put(schedules, json={"mine": "0 4 * * *"}, headers=engineer.headers).status_code == 200
        make_due(env["LABELWHEEL_DATABASE_URL"], timedelta(0))  # due now: the next minute tick starts it
        label_digits(client, project, annotator, truth, 150)

        champion = wait_for(
            lambda: (
                client.get(f"/api/v1/projects/{project['id']}/models/champion", headers=engineer.headers)
                .json()
                .get("id")
            ),
            timeout=120,
            what="the first champion",
        )
        first = predict(client, project, engineer)
        assert first["predictions"][0]["label"] in truth.values()

        label_digits(client, project, annotator, truth, 5)
        refreshed = wait_for(
            lambda: (p := predict(client, project, engineer)) and p["model_id"] != champion and p,
            timeout=60,
            what="a refreshed head serving predictions",
        )
        card = client.get(f"/api/v1/models/{refreshed['model_id']}", headers=engineer.headers).json()
        assert card["kind"] == "refresh" and card["parent_id"] == champion

        label_digits(client, project, annotator, truth, 100)
        second = wait_for(
            lambda: [
                m for m in full_models(client, project, engineer) if m["id"] != champion and m["status"] != "training"
            ],
            timeout=120,
            what="a second full training",
        )[0]
        first_card = client.get(f"/api/v1/models/{champion}", headers=engineer.headers).json()
        second_card = client.get(f"/api/v1/models/{second['id']}", headers=engineer.headers).json()
        assert second_card["snapshot"]["item_count"] > first_card["snapshot"]["item_count"]
        assert second_card["parent_id"] == champion
        assert second_card["decision"]["compared_with"] == "champion" and "p_value" in second_card["decision"]
        jobs = client.get(f"/api/v1/projects/{project['id']}/jobs", headers=engineer.headers).json()
        kinds = {j["kind"] for j in jobs}
        assert kinds >= {"train", "refresh", "embed"} and "export" not in kinds  # a head's files wait for a download
        assert all(j["params"].get("trigger") != "manual" for j in jobs)  # no human started anything

        def scheduled():
            return [j for j in mine_jobs(client, project, engineer) if j["params"].get("trigger") == "schedule"]

        (ticked,) = wait_for(scheduled, timeout=90, what="the minute tick's mining job")  # usually long done
        (schedule,) = client.get(schedules, headers=engineer.headers).json()
        assert schedule["last_job_id"] == ticked["id"] and schedule["next_run_at"][11:16] == "04:00"
    gone, alive = psutil.wait_procs([worker, *lanes], timeout=30)
    assert not alive, f"still running after serve stopped: {alive}"


def start_worker(env) -> subprocess.Popen:
    return subprocess.Popen(
        [LABELWHEEL, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop_worker(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(timeout=30)


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


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_workers_elsewhere_run_jobs_and_missed_schedules_from_redis_with_postgresql(env, tmp_path, redis_url):
    """The at-scale setup: API and worker share only PostgreSQL and Redis (the SQLite queue is covered below).
    A schedule missed while no worker ran starts its job once when the worker starts; then a training runs."""
    env = {**env, "LABELWHEEL_QUEUE_URL": redis_url, "LABELWHEEL_EMBEDDED_WORKER": "false"}
    with running_server(env, tmp_path / "server.log") as (_, base), httpx.Client(base_url=base, timeout=30) as client:
        admin, engineer, annotator = team(client)
        project, truth = digit_project(client, admin, engineer, annotator, count=150, training={"auto_train": False})
        label_digits(client, project, annotator, truth, 60)
        url = f"/api/v1/projects/{project['id']}/schedules"
        assert client.put(url, json={"mine": "0 4 * * *"}, headers=engineer.headers).status_code == 200
        make_due(env["LABELWHEEL_DATABASE_URL"], timedelta(days=3))  # three daily slots missed
        worker = start_worker(env)
        try:
            (mined,) = wait_for(
                lambda: [j for j in mine_jobs(client, project, engineer) if j["status"] in ("succeeded", "failed")],
                timeout=90,
                what="the scheduled mining job",
            )
            assert mined["params"]["trigger"] == "schedule" and len(mine_jobs(client, project, engineer)) == 1
            assert mined["status"] == "failed" and "no model yet" in mined["error"]  # run by the worker
            (schedule,) = client.get(url, headers=engineer.headers).json()
            assert schedule["last_job_id"] == mined["id"] and schedule["next_run_at"][11:16] == "04:00"

            created = client.post(
                f"/api/v1/projects/{project['id']}/jobs", json={"kind": "train"}, headers=engineer.headers
            )
            job_id = created.json()["id"]
            done = wait_for(
                lambda: (
                    (j := client.get(f"/api/v1/jobs/{job_id}", headers=engineer.headers).json())["status"]
                    in ("succeeded", "failed")
                    and j
                ),
                timeout=120,
                what="the training job",
            )
            assert done["status"] == "succeeded", done
            assert done["worker"].endswith(tuple(str(p) for p in range(10)))  # host:pid of the lane process
            assert predict(client, project, engineer)["model_id"] == done["result"]["model_id"]
        finally:
            stop_worker(worker)


def make_due(database_url: str, ago: timedelta) -> None:
    """Every schedule fell due ``ago`` (as if the service had been down since)."""
    from sqlalchemy import update

    from storage.db import Database
    from storage.models import Schedule, utcnow

    db = Database(database_url)
    with db.session() as session:
        session.execute(update(Schedule).values(next_run_at=utcnow() - ago))
    db.dispose()


def mine_jobs(client, project, engineer) -> list[dict]:
    jobs = client.get(f"/api/v1/projects/{project['id']}/jobs", headers=engineer.headers).json()
    return [j for j in jobs if j["kind"] == "mine"]


def test_a_worker_killed_mid_training_leaves_a_job_that_finishes_after_restart_with_one_model(env, tmp_path):
    env = {**env, "LABELWHEEL_EMBEDDED_WORKER": "false"}
    slow = {"auto_train": False, "auto_refresh": False, "epochs": 40, "patience": 40, "input_size": 32}
    with running_server(env, tmp_path / "server.log") as (_, base), httpx.Client(base_url=base, timeout=30) as client:
        admin, engineer, annotator = team(client)
        project, truth = digit_project(client, admin, engineer, annotator, count=150, training=slow)
        label_digits(client, project, annotator, truth, 100)
        job_id = client.post(
            f"/api/v1/projects/{project['id']}/jobs", json={"kind": "train"}, headers=engineer.headers
        ).json()["id"]

        def read():
            return client.get(f"/api/v1/jobs/{job_id}", headers=engineer.headers).json()

        worker = start_worker(env)
        try:
            wait_for(lambda: read()["progress"] >= 0.3, timeout=120, what="training to be well under way")
        finally:
            stop_worker(worker, signal.SIGKILL)
        killed = read()
        assert killed["status"] == "running" and killed["attempts"] == 1 and killed["progress"] < 1

        worker = start_worker(env)
        try:
            done = wait_for(
                lambda: (j := read())["status"] in ("succeeded", "failed") and j, timeout=240, what="the retry"
            )
        finally:
            stop_worker(worker)
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        models = full_models(client, project, engineer)
        assert [m["job_id"] for m in models] == [job_id]  # the retry finished the same model, no duplicate
        assert models[0]["status"] == "champion"
