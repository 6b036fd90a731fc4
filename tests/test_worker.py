"""The flywheel with real processes: `labelwheel serve` and its worker, `labelwheel worker` on SQLite's queue
and on Redis, and worker lanes killed with SIGKILL in the middle of their jobs.
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
from tests.digits import digit_project, label_digits
from tests.factories import Account

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "worker-test-admin-token-0123456789"
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def env(tmp_path, database_url):
    return {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(tmp_path / "data"),
        "LABELWHEEL_DATABASE_URL": database_url,
        "LABELWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
        "LABELWHEEL_JOB_STALE_SECONDS": "20",
        # Trainings here are the tests' work: not nicer than the other test process sharing the cores.
        "LABELWHEEL_JOB_NICENESS": "0",
    }


def account(client: httpx.Client, admin: Account, name: str, role: Role) -> Account:
    created = client.post("/api/v1/users", json={"name": name, "role": role.value}, headers=admin.headers)
    assert created.status_code == 201, created.text
    body = created.json()
    return Account(body["id"], name, role, body["token"])


def team(client: httpx.Client) -> tuple[Account, Account, Account]:
    admin = Account(0, "admin", Role.admin, ADMIN_TOKEN)
    return admin, account(client, admin, "eng", Role.engineer), account(client, admin, "ann", Role.annotator)


def wait_for(condition, *, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
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
    """The embedded default end to end. Meanwhile huey's real periodic tick starts a schedule that fell due (the
    one test that waits for the clock, every 15 s here instead of 60; run_due_schedules itself is tested without it
    in tests/test_mining.py)."""
    import psutil

    env = {**env, "LABELWHEEL_UPKEEP_SECONDS": "15"}
    # Training waits 3 s for labels to settle, so the first one sees all 150 labels given at once.
    policy = {"min_new_labels": 100, "epochs": 8, "patience": 8, "debounce_seconds": 3, "input_size": 16}
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
        make_due(env["LABELWHEEL_DATABASE_URL"], timedelta(0))  # due now: the next tick starts it
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

        def ticked():
            (schedule,) = client.get(schedules, headers=engineer.headers).json()
            return schedule["last_job_id"] is not None and schedule

        schedule = wait_for(ticked, timeout=90, what="the tick's mining job")  # usually long done
        assert schedule["next_run_at"][11:16] == "04:00"
        # Its own job, or (a mining pass of the new champion still waiting) that one standing in for it.
        (job_,) = [j for j in mine_jobs(client, project, engineer) if j["id"] == schedule["last_job_id"]]
        assert job_["params"]["trigger"] in ("schedule", "promotion")
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


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_worker_elsewhere_runs_missed_schedules_once_from_redis_with_postgresql(env, tmp_path, redis_url):
    """API and worker share only PostgreSQL and Redis: a schedule missed while no worker ran starts its job once
    when the worker starts. (Trainings on such workers, killed or not: tests/test_deployment.py.)"""
    env = {**env, "LABELWHEEL_QUEUE_URL": redis_url, "LABELWHEEL_EMBEDDED_WORKER": "false"}
    with running_server(env, tmp_path / "server.log") as (_, base), httpx.Client(base_url=base, timeout=30) as client:
        admin, engineer, annotator = team(client)
        project, _ = digit_project(client, admin, engineer, annotator, count=20, training={"auto_train": False})
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
            assert mined["status"] == "failed" and "no model yet" in mined["error"]
            assert mined["worker"].endswith(tuple(str(p) for p in range(10)))  # host:pid of the worker's lane
            (schedule,) = client.get(url, headers=engineer.headers).json()
            assert schedule["last_job_id"] == mined["id"] and schedule["next_run_at"][11:16] == "04:00"
        finally:
            stop_worker(worker)


def abandoned_mine_job(env: dict[str, str], project_id: int) -> int:
    """The job of a `labelwheel mine` on another machine that died right after starting it (it is run in the
    command's own process, never enqueued): running, and no heartbeat ever again."""
    from pathlib import Path

    from flywheel.jobs.rows import claim_job, create_job
    from flywheel.jobs.transport import get_transport
    from storage.db import Database
    from storage.models import JobKind

    db = Database(env["LABELWHEEL_DATABASE_URL"])
    transport = get_transport(f"sqlite:///{Path(env['LABELWHEEL_DATA_DIR']).resolve() / 'queue.db'}")
    with db.session() as session:
        job = create_job(session, project_id=project_id, kind=JobKind.mine, transport=transport, enqueue=False)
    assert claim_job(db, job_id=job.id, worker="elsewhere:1") is not None
    db.dispose()
    return job.id


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


def test_lanes_killed_mid_job_are_restarted_the_jobs_finish_once_and_past_the_budget_serve_says_so(env, tmp_path):
    """serve's worker with LABELWHEEL_LANE_RESTARTS=1: the slow lane is killed with SIGKILL mid-training, then the
    fast lane mid-refresh; each is restarted and its job finishes on the second attempt with one model. Meanwhile a
    job whose worker elsewhere died goes stale and is run again. A second kill of the slow lane spends its budget:
    the worker stops, serve says so and /health is degraded."""
    import psutil

    env = {**env, "LABELWHEEL_JOB_STALE_SECONDS": "5", "LABELWHEEL_LANE_RESTARTS": "1", "LABELWHEEL_JOB_NICENESS": "3"}
    policy = {"auto_train": False, "auto_refresh": False, "epochs": 10, "patience": 10}
    log = tmp_path / "server.log"
    with running_server(env, log) as (server, base), httpx.Client(base_url=base, timeout=30) as client:
        admin, engineer, annotator = team(client)
        project, truth = digit_project(client, admin, engineer, annotator, count=150, training=policy)
        label_digits(client, project, annotator, truth, 100)

        def read(job_id: int) -> dict:
            return client.get(f"/api/v1/jobs/{job_id}", headers=engineer.headers).json()

        def killed_mid_job(kind: str, *, progress: float) -> dict:
            url = f"/api/v1/projects/{project['id']}/jobs"
            job_id = client.post(url, json={"kind": kind}, headers=engineer.headers).json()["id"]
            job = wait_for(
                lambda: (j := read(job_id))["status"] == "running" and j["progress"] >= progress and j,
                timeout=120,
                interval=0.02,
                what=f"the {kind} job to be under way",
            )
            pid = int(job["worker"].rpartition(":")[2])
            nicer = 3 if kind == "train" else 0  # the slow lane yields the CPU to the API, a refresh does not
            assert psutil.Process(pid).nice() == psutil.Process(server.pid).nice() + nicer
            os.kill(pid, signal.SIGKILL)  # the lane process running it
            return wait_for(lambda: (j := read(job_id))["status"] in FINISHED and j, timeout=240, what="the retry")

        def lane(name: str) -> dict:
            (consumer,) = client.get("/health").json()["lanes"][name]["consumers"]
            return consumer

        training = killed_mid_job("train", progress=0.2)
        assert training["status"] == "succeeded" and training["attempts"] == 2, training
        models = full_models(client, project, engineer)
        assert [m["job_id"] for m in models] == [training["id"]]  # the retry finished the same model, no duplicate
        assert models[0]["status"] == "champion"
        assert lane("slow")["restarts"] == 1 and lane("slow")["last_exit"] == "killed by SIGKILL"

        stale_since = time.monotonic()
        abandoned = abandoned_mine_job(env, project["id"])

        refresh = killed_mid_job("refresh", progress=0)
        assert refresh["status"] == "succeeded" and refresh["attempts"] == 2, refresh
        models = client.get(f"/api/v1/projects/{project['id']}/models?kind=all", headers=engineer.headers).json()
        assert [m["id"] for m in models if m["job_id"] == refresh["id"]] == [refresh["result"]["model_id"]]
        health = client.get("/health")
        assert health.status_code == 200 and lane("fast")["restarts"] == 1 and lane("slow")["up"]

        # Within LABELWHEEL_JOB_STALE_SECONDS + 60 s of its last heartbeat, a job any dead worker left is run again.
        wait_for(
            lambda: read(abandoned)["attempts"] == 2,
            timeout=5 + 60 - (time.monotonic() - stale_since),
            what="the abandoned job's retry",
        )
        mined = wait_for(lambda: (j := read(abandoned))["status"] in FINISHED and j, timeout=60, what="mining")
        assert mined["status"] == "succeeded" and mined["worker"] != "elsewhere:1", mined

        os.kill(int(lane("slow")["worker"].rpartition(":")[2]), signal.SIGKILL)
        wait_for(lambda: "the job worker" in log.read_text(), timeout=60, what="serve to report its worker's exit")
        assert "exited with code 1" in log.read_text()
        assert psutil.Process(server.pid).children() == []  # the worker and its other lane are gone
        health = client.get("/health")  # the API stays up, and says what is wrong
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert {name: lane["status"] for name, lane in health.json()["lanes"].items()} == {
            "fast": "down",
            "slow": "down",
        }
        assert "LABELWHEEL_LANE_RESTARTS" in lane("slow")["last_exit"]


def test_the_slow_lane_runs_its_upkeep_every_upkeep_seconds_and_drops_one_left_waiting(tmp_path):
    """LABELWHEEL_UPKEEP_SECONDS is the slow lane's periodic cadence: its scheduler enqueues one upkeep message per
    ``upkeep_seconds`` (huey's own is one a minute, counted from the lane's start). An upkeep that waited more than
    a minute (behind a long job) is dropped unrun."""
    from datetime import UTC, datetime

    from flywheel.jobs.transport import TaskBodies, Transport

    upkeeps: list[int] = []

    def enqueued_in_two_ticks(upkeep_seconds: int) -> list:
        transport = Transport(f"sqlite:///{tmp_path / f'queue-{upkeep_seconds}.db'}")
        transport.serve(TaskBodies(run_job=print, check_policy=print, upkeep=lambda: upkeeps.append(1)))
        consumer = transport.consumer("slow", upkeep_seconds=upkeep_seconds)
        scheduler = consumer.scheduler_class(
            huey=transport.lanes["slow"], stop_flag=consumer.stop_flag, interval=1, periodic=True
        )
        for _ in range(2):  # each loop waits out its one-second interval
            scheduler.loop()
        huey = transport.lanes["slow"]
        tasks = [huey.dequeue() for _ in range(huey.pending_count())]
        if upkeep_seconds == 1:
            a_minute_later = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=61)  # huey's: naive UTC
            huey.execute(tasks[0], timestamp=a_minute_later)
            assert upkeeps == []
            huey.execute(tasks[1])
            assert upkeeps == [1]
        transport.close()
        return tasks

    assert len(enqueued_in_two_ticks(1)) == 2
    assert len(enqueued_in_two_ticks(60)) == 1
