"""Against a real Label Studio server (tests/labelstudio_server.py): connect a project, label in Label Studio as
several users, and see labelwheel store the labels, train, and put its predictions back into Label Studio.

Starting Label Studio takes seconds from the cached environment and data (minutes the very first time), so one
session fixture starts it and one test walks the whole loop.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from filelock import FileLock
from typer.testing import CliRunner

from service.cli import app as cli
from storage.settings import get_settings
from tests import labelstudio_server as server
from tests.conftest import unavailable
from tests.digits import DIGIT_LABELS, FAST_TRAINING, digits
from tests.factories import make_project
from tests.jobs import run
from tests.labelstudio_host import file_host

CONFIG = '<View><Image name="img" value="$image"/><Choices name="digit" toName="img">{}</Choices></View>'.format(
    "".join(f'<Choice value="{d}"/>' for d in DIGIT_LABELS)
)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.Running]:
    work = tmp_path_factory.mktemp("labelstudio")
    try:
        server.cache_dir().mkdir(parents=True, exist_ok=True)
        with FileLock(server.lock_path()):  # one builder per machine
            started = time.monotonic()
            server.ensure_env()
            data = server.migrated_data(work)
            print(f"label studio environment and data ready in {time.monotonic() - started:.1f} s")  # noqa: T201
        started = time.monotonic()
        running = server.start(data, log=work / "labelstudio.log")
        print(f"label studio answered after {time.monotonic() - started:.1f} s")  # noqa: T201
    except Exception as exc:  # a failed install, a server that does not come up: either way not available here
        unavailable("labelstudio", f"{type(exc).__name__}: {str(exc)[-500:]}")
    yield running
    running.stop()


@contextmanager
def serving(app) -> Iterator[str]:
    """The test's labelwheel app on a loopback port, where Label Studio can call it."""
    port = server.free_port()
    uvicorn_server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    while not uvicorn_server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(10)


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.2)
    return found


def test_a_label_studio_project_labeled_by_its_users_trains_labelwheel_and_shows_its_predictions(
    label_studio, app, client, admin, settings, monkeypatch
):
    from label_studio_sdk import LabelStudio

    ls = LabelStudio(base_url=label_studio.url, api_key=server.TOKEN)
    auth = {"Authorization": f"Token {server.TOKEN}"}
    training = {**FAST_TRAINING, "auto_train": False}
    project = make_project(
        client, admin, name="digits", labels=DIGIT_LABELS, settings={"overlap_rate": 0, "training": training}
    )
    pid = project["id"]
    ls_project = ls.projects.create(title=f"digits {uuid.uuid4().hex[:6]}", label_config=CONFIG)
    pngs, truth = digits()
    files = {f"file{i}": (f"d{i}_{truth[i]}.png", pngs[i], "image/png") for i in range(60)}
    imported = httpx.post(f"{label_studio.url}/api/projects/{ls_project.id}/import", files=files, headers=auth)
    assert imported.status_code == 201, imported.text
    tasks = sorted(ls.tasks.list(project=ls_project.id, fields="all"), key=lambda t: t.id)
    digit = {t.id: t.data["image"].rsplit("_", 1)[1][0] for t in tasks}
    people = [ls.users.create(username=f"ann{k}", email=f"ann{k}-{uuid.uuid4().hex[:6]}@example.com") for k in (1, 2)]

    def label(task_id: int, by: int, answer: str | None = None):
        result = [{"from_name": "digit", "to_name": "img", "type": "choices",
                   "value": {"choices": [answer or digit[task_id]]}}]  # fmt: skip
        return ls.annotations.create(id=task_id, result=result, completed_by=by, lead_time=1.5)

    for k, task in enumerate(tasks[:10]):  # labeled before labelwheel was connected
        label(task.id, people[k % 2].id)

    with file_host() as elsewhere, serving(app) as labelwheel:
        elsewhere.files["/x.png"] = pngs[100]
        foreign = ls.tasks.create(project=ls_project.id, data={"image": elsewhere.url + "/x.png"})
        monkeypatch.setenv("LABELWHEEL_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("LABELWHEEL_DATABASE_URL", settings.database_url)
        get_settings.cache_clear()
        command = ["labelstudio", "connect", "--url", label_studio.url, "--api-key", server.TOKEN,
                   "--ls-project", str(ls_project.id), "--project", "digits", "--backend-url", labelwheel]  # fmt: skip
        try:
            first = CliRunner().invoke(cli, command)
            again = CliRunner().invoke(cli, command)
            status = CliRunner().invoke(cli, ["labelstudio", "status", "--project", "digits"])
        finally:
            get_settings.cache_clear()
        assert first.exit_code == 0, first.output
        assert "61 tasks, 60 images held, 1 refused; 10 annotations imported" in first.output
        assert f"task {foreign.id} image_not_allowed" in first.output
        assert "61 tasks, 60 images held, 1 refused; 0 annotations imported, 10 already there" in again.output
        assert "in sync: no: 1 tasks not held yet" in status.output and "webhook: " in status.output
        assert elsewhere.requests == []

        names = {u["id"]: u["name"] for u in client.get("/api/v1/users", headers=admin.headers).json()}

        def current() -> dict[tuple[int, str], str]:
            rows = client.get(f"/api/v1/projects/{pid}/annotations?limit=1000", headers=admin.headers).json()["items"]
            return {(r["image_id"], names[r["annotator_id"]]): r["label"] for r in rows if r["is_current"]}

        assert {name for _, name in current()} == {f"ls-{p.id}" for p in people}

        # Labeling in Label Studio reaches labelwheel through the webhook, as each user's own labels.
        made = [label(task.id, people[k % 2].id) for k, task in enumerate(tasks[10:45])]
        wait_for(lambda: len(current()) == 45, "45 labels in labelwheel")
        changed = ls.annotations.update(id=made[0].id, result=[{"from_name": "digit", "to_name": "img",
                                        "type": "choices", "value": {"choices": ["9"]}}])  # fmt: skip
        ls.annotations.delete(id=made[1].id)
        wait_for(lambda: len(current()) == 44 and "9" in current().values(), "the update and the deletion")
        stored = current()
        assert sum(1 for label_ in stored.values() if label_ == "9") >= 1 and changed.id == made[0].id

        created = client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "train"}, headers=admin.headers).json()
        run(app, created["id"])
        trained = client.get(f"/api/v1/jobs/{created['id']}", headers=admin.headers).json()
        assert trained["status"] == "succeeded" and trained["result"]["promoted"], trained
        version = f"model-{trained['result']['model_id']}"
        mine = client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "mine"}, headers=admin.headers).json()
        run(app, mine["id"])
        mined = client.get(f"/api/v1/jobs/{mine['id']}", headers=admin.headers).json()
        assert mined["result"]["labelstudio"] == {"pushed": 60, "model_version": version}, mined

        # Label Studio now holds labelwheel's predictions, and its sort by prediction score starts where
        # labelwheel's queue does.
        unlabeled = [t.id for t in tasks[45:]]
        predictions = {p.task: p for p in ls.predictions.list(project=ls_project.id) if p.task in unlabeled}
        assert set(predictions) == set(unlabeled)
        assert {p.model_version for p in predictions.values()} == {version}
        assert all(0.25 <= p.score < 1 for p in predictions.values())
        first_in_ls = max(predictions.values(), key=lambda p: p.score).task
        served = client.get(f"/api/v1/projects/{pid}/tasks/next", headers=admin.headers).json()["image_id"]
        held = client.get(f"/api/v1/projects/{pid}/labelstudio", headers=admin.headers).json()
        assert held["pushed"] == 60 and held["tasks"] == 60
        image_of = {t.id: i for i, t in enumerate(tasks)}
        served_png = client.get(f"/api/v1/images/{served}/content", headers=admin.headers).content
        assert pngs[image_of[first_in_ls]] == served_png

        # Label Studio asking itself (its "retrieve predictions" action calls /predict): a new task is predicted,
        # the task on another host is answered with an error and nothing is fetched from there.
        late = ls.tasks.create(project=ls_project.id, data={"image": tasks[50].data["image"]})
        action = httpx.post(
            f"{label_studio.url}/api/dm/actions?id=retrieve_tasks_predictions&project={ls_project.id}",
            json={"selectedItems": {"all": False, "included": [late.id, foreign.id]}},
            headers=auth,
            timeout=60,
        )
        assert action.status_code == 200, action.text
        asked = wait_for(lambda: list(ls.predictions.list(task=late.id)), "Label Studio's own prediction")
        assert asked[0].model_version == version and asked[0].result[0]["value"]["choices"][0] in DIGIT_LABELS
        assert elsewhere.requests == []
