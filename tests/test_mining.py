"""Mining end to end: HTTP, a real database, jobs run in this process through ``run_job``.

With a champion, a ``mine`` job scores the unlabeled pool and reorders ``tasks/next``; labels the
model firmly contradicts go back to another annotator; schedules start jobs once when they fall due.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from flywheel.jobs.rows import reap_jobs
from flywheel.schedules import run_due_schedules
from flywheel.training import mining
from storage.models import Job, JobKind, Prediction, Role, Schedule, utcnow
from tests.digits import digit_project, digits
from tests.factories import make_project, make_user
from tests.jobs import run
from tests.test_cli import LABELWHEEL
from tests.test_flywheel import job, start

pytestmark = pytest.mark.slow


@pytest.fixture
def team(app):
    return (
        make_user(app, "eng", Role.engineer),
        make_user(app, "ann", Role.annotator),
        make_user(app, "reviewer", Role.annotator),
    )


def settle(client, admin, project, **mining) -> None:
    response = client.patch(
        f"/api/v1/projects/{project['id']}/settings", json={"settings": {"mining": mining}}, headers=admin.headers
    )
    assert response.status_code == 200, response.text


def splits(client, account, project) -> dict[int, str]:
    page = client.get(f"/api/v1/projects/{project['id']}/images?limit=1000", headers=account.headers).json()
    return {image["id"]: image["split"] for image in page["items"]}


class Crash(BaseException):
    """The worker process dying mid-job: nothing records the end of the job."""


def test_a_mining_job_puts_the_least_confident_images_first_and_resumes_after_a_crash(trained, monkeypatch):
    monkeypatch.setattr(mining, "SCORE_BATCH", 64)  # several batches in a small pool
    app, client, admin, engineer, annotator = (
        trained.app,
        trained.client,
        trained.admin,
        trained.engineer,
        trained.annotator,
    )
    project, truth, champion = trained.project, trained.truth, trained.champion_id
    settle(client, admin, project, strategy="least_confidence", batch_size=20)
    rt = app.state.runtime
    unlabeled = [i for i in truth if i not in labeled_ids(client, admin, project)]
    gone = unlabeled[-1]
    rt.blobs.delete(client.get(f"/api/v1/images/{gone}", headers=admin.headers).json()["sha256"])

    created = start(client, project, engineer, kind="mine")

    def crash_after_a_batch(fraction: float, message: str) -> None:
        if message.startswith("scored 64/"):
            raise Crash()

    with pytest.raises(Crash):
        run_with_progress(app, created["id"], crash_after_a_batch)
    assert job(client, engineer, created["id"])["status"] == "running"  # its worker is gone
    with rt.db.read_session() as session:
        scored_before = session.scalar(select(func.count()).where(Prediction.model_id == champion))
    assert scored_before in (64, 128)  # the batch being written when it died may have landed too
    assert reap_jobs(rt.db, stale_seconds=0, include_queued=False) == [(created["id"], JobKind.mine)]
    assert run(app, created["id"]).value == "succeeded"
    done = job(client, engineer, created["id"])
    result = done["result"]
    assert done["attempts"] == 2 and done["progress"] == 1.0
    # The retry scored only what the crashed attempt had not: the unlabeled pool and the labeled training
    # images (for the relabel queue). The image whose file is gone was skipped and reported.
    split = splits(client, admin, project)
    labeled_train = [i for i in truth if i not in unlabeled and split[i] == "train"]
    assert sorted(_scored(rt, champion)) == sorted([i for i in unlabeled if i != gone] + labeled_train)
    assert result["scored"] == len(_scored(rt, champion)) - scored_before
    assert result["missing"] == [{"image_id": gone, "reason": "its file is missing from the blob store"}]
    assert result["missing_count"] == 1 and result["model_id"] == champion
    assert result["strategy"] == "least_confidence" and result["chosen"] >= 20

    # tasks/next now serves the mining order, the least confident training images first.
    served = []
    for _ in range(8):
        task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers).json()
        served.append(task["image_id"])
        assert task["prelabel"]["model_version"] == f"model-{champion}"  # the newest model's answer
        client.post(f"/api/v1/projects/{project['id']}/tasks/{task['image_id']}/skip", headers=annotator.headers)
    assert served == result["first"][:8]
    confidence = predicted_confidence(client, engineer, project, truth, [i for i in unlabeled if i != gone])
    train_pool = [i for i in unlabeled if i != gone and split[i] == "train"]
    chosen = [i for i in served if i in train_pool]
    rest = [confidence[i] for i in train_pool if i not in result["first"]]
    # (onnxruntime and torch agree to 1e-4, hence the tolerance)
    assert served[0] == chosen[0] and confidence[served[0]] <= min(confidence[i] for i in train_pool) + 1e-4
    assert all(confidence[a] <= confidence[b] + 1e-4 for a, b in itertools.pairwise(chosen))
    assert max(confidence[i] for i in chosen) <= min(rest) + 1e-4

    # A second pass with the same model scores nothing again and keeps the same order.
    again = start(client, project, engineer, kind="mine")
    assert run(app, again["id"]).value == "succeeded"
    assert job(client, engineer, again["id"])["result"]["scored"] == 0


def test_a_new_champion_sets_off_a_mining_pass_unless_the_project_turns_it_off(trained):
    app, client, admin, engineer, annotator = (
        trained.app,
        trained.client,
        trained.admin,
        trained.engineer,
        trained.annotator,
    )
    project, champion = trained.project, trained.champion_id
    queued = client.get(f"/api/v1/projects/{project['id']}/jobs", headers=engineer.headers).json()
    follow_ups = sorted((j["id"], j["kind"], j["params"]) for j in queued if j["status"] == "queued")
    (embed_id, *_), (mine_id, *_) = follow_ups  # the embeddings first, as the slow lane runs them
    assert [kind for _, kind, _ in follow_ups] == ["embed", "mine"]
    assert follow_ups[1][2] == {"trigger": "promotion"}
    assert run(app, embed_id).value == "succeeded" and run(app, mine_id).value == "succeeded"
    mined = job(client, engineer, mine_id)["result"]
    assert mined["model_id"] == champion and mined["chosen"] > 0
    task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers).json()
    assert task["image_id"] == mined["first"][0]

    settle(client, admin, project, after_promotion=False)
    promoted = client.post(f"/api/v1/models/{champion}/promote", json={"reason": "again"}, headers=engineer.headers)
    assert promoted.status_code == 200, promoted.text
    queued = client.get(f"/api/v1/projects/{project['id']}/jobs", headers=engineer.headers).json()
    assert [j["kind"] for j in queued if j["status"] == "queued"] == ["embed"]


def labeled_ids(client, account, project) -> set[int]:
    page = client.get(f"/api/v1/projects/{project['id']}/labels?limit=1000", headers=account.headers).json()
    return {item["image_id"] for item in page["items"]}


def _scored(rt, model_id: int) -> list[int]:
    with rt.db.read_session() as session:
        return list(session.scalars(select(Prediction.image_id).where(Prediction.model_id == model_id)))


def run_with_progress(app, job_id: int, on_progress):
    return run(app, job_id, on_progress)


def predicted_confidence(client, engineer, project, truth, image_ids) -> dict[int, float]:
    """The serving model's top probability for each image, through POST /predict (onnxruntime)."""
    pngs, _ = digits()
    position = {image_id: k for k, image_id in enumerate(truth)}
    confidence = {}
    for first in range(0, len(image_ids), 100):  # LABELWHEEL_PREDICT_MAX_FILES per request
        chunk = image_ids[first : first + 100]
        files = [("files", (f"{i}.png", pngs[position[i]], "image/png")) for i in chunk]
        answer = client.post(f"/api/v1/projects/{project['id']}/predict", files=files, headers=engineer.headers)
        assert answer.status_code == 200, answer.text
        confidence |= {i: p["confidence"] for i, p in zip(chunk, answer.json()["predictions"], strict=True)}
    return confidence


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(settings.data_dir),
        "LABELWHEEL_DATABASE_URL": settings.resolved_database_url,
    }
    return subprocess.run([LABELWHEEL, *args], env=env, capture_output=True, text=True, timeout=180)


def test_labels_the_model_firmly_contradicts_go_to_another_annotator_within_the_share(trained):
    app, client, admin, engineer, annotator = (
        trained.app,
        trained.client,
        trained.admin,
        trained.engineer,
        trained.annotator,
    )
    project, truth = trained.project, trained.truth
    reviewer = make_user(app, "reviewer", Role.annotator)
    added = client.post(
        f"/api/v1/projects/{project['id']}/members", json={"user_id": reviewer.id}, headers=admin.headers
    )
    assert added.status_code == 201, added.text
    settle(client, admin, project, batch_size=20, relabel_share=0.1)  # at most 2 relabel tasks wait at once
    split, labeled = splits(client, admin, project), labeled_ids(client, admin, project)
    # A 0 labeled as a 1, a 3 as a 4, a 6 as a 7: single votes the champion firmly disagrees with.
    wrong = {next(i for i in truth if truth[i] == d and split[i] == "train" and i not in labeled): d for d in "036"}
    for image_id, digit in wrong.items():
        given = client.post(
            f"/api/v1/projects/{project['id']}/annotations",
            json={"image_id": image_id, "label": str(int(digit) + 1)},
            headers=annotator.headers,
        )
        assert given.status_code == 201, given.text

    mined = cli(app.state.runtime.settings, "mine", "--project", project["name"])
    assert mined.returncode == 0, mined.stderr
    assert "2 labels sent back for review" in mined.stdout
    jobs = client.get(f"/api/v1/projects/{project['id']}/jobs", headers=engineer.headers).json()
    # (the promotion's own mining pass waits in the queue: no worker runs in this test)
    (mine_job,) = [j for j in jobs if j["kind"] == "mine" and j["params"]["trigger"] == "cli"]
    assert mine_job["status"] == "succeeded"
    sent = mine_job["result"]["relabel"]
    assert len(sent) == 2 and {s["image_id"] for s in sent} <= set(wrong)
    for s in sent:
        assert s["predicted"] == wrong[s["image_id"]] and s["label"] == str(int(s["predicted"]) + 1)
    assert sent[0]["probability"] <= sent[1]["probability"]

    # Another annotator gets them first, with the reason; the one who gave the label never sees them again.
    task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=reviewer.headers).json()
    first = sent[0]
    assert task["image_id"] == first["image_id"]
    assert task["review_reason"].startswith(f"relabel: the model gives the label '{first['label']}' a probability of")
    assert f"predicts '{first['predicted']}'" in task["review_reason"]
    own = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers).json()
    assert own["image_id"] not in wrong and own["review_reason"] is None

    # While those two wait, the share is full: the third wrong label waits its turn.
    again = start(client, project, engineer, kind="mine")
    assert run(app, again["id"]).value == "succeeded"
    assert job(client, engineer, again["id"])["result"]["relabel"] == []


def test_mining_without_a_model_fails_with_a_clear_message(app, client, admin, team, settings):
    engineer, annotator, _ = team
    project, _ = digit_project(client, admin, engineer, annotator, count=20)
    created = start(client, project, engineer, kind="mine")
    assert run(app, created["id"]).value == "failed"
    assert "no model yet" in job(client, engineer, created["id"])["error"]
    # (`labelwheel mine` runs this same job: tests/test_mining.py's relabel test runs it to success.)
    unknown = cli(settings, "mine", "--project", "nope")
    assert unknown.returncode == 1 and "no project named 'nope'" in unknown.stderr


def test_an_unknown_strategy_is_refused_with_the_valid_names(client, admin):
    project = make_project(client, admin)
    for response in (
        client.patch(
            f"/api/v1/projects/{project['id']}/settings",
            json={"settings": {"mining": {"strategy": "coreset"}}},
            headers=admin.headers,
        ),
        client.post(
            "/api/v1/projects",
            json={"name": "x", "labels": ["a", "b"], "settings": {"mining": {"strategy": "coreset"}}},
            headers=admin.headers,
        ),
    ):
        assert response.status_code == 422
        message = response.json()["error"]["message"]
        assert "mining.strategy" in message
        assert all(name in message for name in ("random", "least_confidence", "margin", "entropy", "margin_kcenter"))


def test_schedules_are_validated_and_a_due_one_starts_its_job_once(app, client, admin, engineer):
    project = make_project(client, admin, engineer)
    url = f"/api/v1/projects/{project['id']}/schedules"
    for cron, why in (
        ("61 * * * *", "out of range"),
        ("* * *", "has 3 fields; use five (minute hour day-of-month month day-of-week)"),
        ("0 0 30 2 *", "failed to find next date"),
        ("*/0 * * * *", "step '0'"),
    ):
        refused = client.put(url, json={"mine": cron}, headers=engineer.headers)
        assert refused.status_code == 422, cron
        assert refused.json()["error"]["code"] == "invalid_cron" and why in refused.json()["error"]["message"]
    assert client.get(url, headers=engineer.headers).json() == []  # nothing half-set

    before = utcnow()
    saved = client.put(url, json={"mine": "*/15 * * * *", "train": "0 3 * * *"}, headers=engineer.headers)
    assert saved.status_code == 200, saved.text
    by_kind = {s["kind"]: s for s in saved.json()}
    assert set(by_kind) == {"mine", "train"} and by_kind["mine"]["last_job_id"] is None
    resaved = client.put(url, json={"mine": "*/15 * * * *", "train": "0 3 * * *"}, headers=engineer.headers).json()
    assert resaved == saved.json()  # unchanged expressions keep their due times

    # The service was down for three hours: five slots missed, the job runs once.
    rt = app.state.runtime
    with rt.db.session() as session:
        session.execute(
            update(Schedule).where(Schedule.kind == JobKind.mine).values(next_run_at=before - timedelta(hours=3))
        )
    started = run_due_schedules(rt.db, rt.transport)
    assert run_due_schedules(rt.db, rt.transport) == []
    (job_id,) = started
    created = client.get(f"/api/v1/jobs/{job_id}", headers=engineer.headers).json()
    assert created["kind"] == "mine" and created["params"] == {"trigger": "schedule", "cron": "*/15 * * * *"}
    mine = {s["kind"]: s for s in client.get(url, headers=engineer.headers).json()}["mine"]
    assert mine["last_job_id"] == job_id and mine["next_run_at"] > utcnow().isoformat()[:19]

    # Due again while that job still waits: it stands in for a new one.
    with rt.db.session() as session:
        session.execute(update(Schedule).where(Schedule.kind == JobKind.mine).values(next_run_at=before))
    assert run_due_schedules(rt.db, rt.transport) == []
    with rt.db.read_session() as session:
        assert session.scalar(select(func.count()).where(Job.kind == JobKind.mine)) == 1

    cleared = client.put(url, json={}, headers=engineer.headers)
    assert cleared.status_code == 200 and cleared.json() == []
