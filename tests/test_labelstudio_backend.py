"""labelwheel as a Label Studio ML backend, through HTTP as Label Studio calls it (no Label Studio running: a
loopback file host stands in for its image serving; tests/test_labelstudio_live.py runs the real server)."""

from __future__ import annotations

import base64

import pytest

from tests.digits import digit_project
from tests.labelstudio_host import file_host

CONFIG = """<View><Image name="img" value="$picture"/>
<Choices name="digit" toName="img">{}</Choices></View>""".format("".join(f'<Choice value="{d}"/>' for d in range(10)))


def connect(client, admin, project_id: int, url: str) -> dict:
    response = client.put(
        f"/api/v1/projects/{project_id}/labelstudio",
        json={"url": url, "access_token": "ls-token-123", "ls_project_id": 7},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


def basic(secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{secret}".encode()).decode()}


def test_predict_answers_each_task_in_order_with_the_queue_priority_and_fetches_only_from_the_host(trained):
    client, project, admin = trained.client, trained.project, trained.admin
    pid = project["id"]
    rows = client.get(f"/api/v1/projects/{pid}/annotations?limit=1000", headers=admin.headers).json()["items"]
    labeled = {row["image_id"] for row in rows}
    # The image labelwheel's queue serves first, and others waiting: Label Studio must sort that one first.
    served = client.get(f"/api/v1/projects/{pid}/tasks/next", headers=trained.annotator.headers).json()["image_id"]
    unlabeled = [served] + [i for i in sorted(trained.truth) if i not in labeled and i != served][:5]
    with file_host() as ls, file_host() as elsewhere:
        link = connect(client, admin, pid, ls.url + "/")
        assert link["backend_url"].endswith(f"/labelstudio/{pid}") and link["url"] == ls.url
        auth = basic(link["basic_auth_password"])
        base = f"/labelstudio/{pid}"
        assert client.get(base + "/health").status_code == 401
        assert client.get(base + "/health", headers=basic("wrong")).status_code == 401
        assert client.get(base + "/health", headers=auth).json()["status"] == "UP"
        version = client.post(base + "/setup", json={"project": "7.1", "schema": CONFIG}, headers=auth).json()
        assert version == {"model_version": f"model-{trained.champion_id}"}

        tasks = []
        for n, image_id in enumerate(unlabeled):
            content = client.get(f"/api/v1/images/{image_id}/content", headers=admin.headers).content
            ls.files[f"/data/upload/7/abc{n}-digit.png"] = content
            tasks.append({"id": 100 + n, "data": {"picture": f"/data/upload/7/abc{n}-digit.png"}})
        elsewhere.files["/x.png"] = ls.files["/data/upload/7/abc0-digit.png"]
        ls.redirects["/data/upload/7/moved.png"] = elsewhere.url + "/x.png"
        tasks.insert(2, {"id": 200, "data": {"picture": elsewhere.url + "/x.png"}})
        tasks.insert(4, {"id": 201, "data": {"picture": "/data/upload/7/moved.png"}})
        tasks.insert(5, {"id": 202, "data": {"picture": f"http://user@{ls.url.removeprefix('http://')}/x.png"}})

        response = client.post(base + "/predict", json={"tasks": tasks, "label_config": CONFIG}, headers=auth)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(tasks)
        refused = {tasks[k]["id"]: r["error"]["code"] for k, r in enumerate(results) if "error" in r}
        assert refused == {200: "image_not_allowed", 201: "image_fetch_failed", 202: "image_not_allowed"}
        assert elsewhere.requests == []  # never reached, not even through the redirect
        assert all(authorization == "Token ls-token-123" for _, authorization in ls.requests)

        # The same answers as labelwheel's own /predict on the same files, and the images are the project's own
        # (deduplicated by sha256), so the score is their place in labelwheel's queue.
        files = [("files", (f"{i}.png", ls.files[t["data"]["picture"]])) for i, t in enumerate(tasks) if t["id"] < 200]
        own = client.post(f"/api/v1/projects/{pid}/predict", files=files, headers=admin.headers).json()["predictions"]
        answered = [r for r in results if "error" not in r]
        for mine, theirs in zip(answered, own, strict=True):
            (choice,) = mine["result"]
            assert (choice["from_name"], choice["to_name"], choice["type"]) == ("digit", "img", "choices")
            assert choice["value"]["choices"] == [theirs["label"]]
            assert choice["score"] == pytest.approx(theirs["confidence"], abs=1e-5)
            assert mine["model_version"] == version["model_version"]
            assert 0.25 <= mine["score"] < 1  # waiting in the queue
        images = client.get(f"/api/v1/projects/{pid}/images?limit=1000", headers=admin.headers).json()
        assert len(images["items"]) == 300  # nothing new: every fetched file was already in the project
        assert max(answered, key=lambda r: r["score"]) is answered[0]

        fetched = len(ls.requests)
        again = client.post(base + "/predict", json={"tasks": tasks, "label_config": CONFIG}, headers=auth).json()
        assert [r.get("result") for r in again["results"]] == [r.get("result") for r in results]
        assert len(ls.requests) == fetched + 1  # only the redirecting task is tried again: the rest are cached
        assert elsewhere.requests == []

        missing = client.post(base + "/predict", json={"tasks": tasks}, headers=auth)
        assert missing.status_code == 422 and "label_config" in missing.json()["error"]["message"]
        odd = [{"id": 2**70, "data": {"picture": "/a.png"}}, {"id": 5}, {"id": True, "data": {}}]
        answered_odd = client.post(base + "/predict", json={"tasks": odd, "label_config": CONFIG}, headers=auth)
        assert [r["error"]["code"] for r in answered_odd.json()["results"]] == ["invalid_task"] * 3
        versions = client.get(base + "/versions", headers=auth).json()["versions"]
        assert version["model_version"] in versions
        status = client.get(f"/api/v1/projects/{pid}/labelstudio", headers=admin.headers).json()
        assert status["tasks"] == len(unlabeled) and status["ls_project_id"] == 7


@pytest.mark.postgres
def test_webhook_events_become_annotations_of_label_studio_users_and_start_training(app, client, admin):
    project, truth = digit_project(client, admin, count=4)
    pid, (first, second) = project["id"], sorted(truth)[:2]
    with file_host() as ls:
        auth = basic(connect(client, admin, pid, ls.url)["basic_auth_password"])
        for image_id in (first, second):
            ls.files[f"/data/upload/7/{image_id}.png"] = client.get(
                f"/api/v1/images/{image_id}/content", headers=admin.headers
            ).content

        def event(action: str, annotation_id: int, user: int, image_id: int, label: str) -> dict:
            result = [{"from_name": "digit", "to_name": "img", "type": "choices", "value": {"choices": [label]}}]
            return {
                "action": action,
                "task": {"id": 10 + image_id, "data": {"picture": f"/data/upload/7/{image_id}.png"}},
                "annotation": {"id": annotation_id, "completed_by": user, "result": result, "lead_time": 2.5},
                "project": {"id": 7, "label_config": CONFIG},
            }

        hook = f"/labelstudio/{pid}/webhook"
        created = client.post(hook, json=event("ANNOTATION_CREATED", 1, 5, first, truth[first]), headers=auth)
        assert created.status_code == 201 and created.json()["status"] == "ok"
        client.post(hook, json=event("ANNOTATION_CREATED", 2, 6, first, truth[first]), headers=auth)
        client.post(hook, json=event("ANNOTATION_CREATED", 3, 5, second, "1"), headers=auth)
        client.post(hook, json=event("ANNOTATION_CREATED", 3, 5, second, "1"), headers=auth)  # sent twice
        client.post(hook, json=event("ANNOTATION_UPDATED", 3, 5, second, "2"), headers=auth)
        bad = client.post(hook, json=event("ANNOTATION_CREATED", 4, 6, second, "cat"), headers=auth)
        assert bad.status_code == 201  # answered at once; the unknown label is refused in the background

        def current() -> list[tuple[int, str, str]]:
            app.state.labelstudio_events.drain(30)  # events are applied after the answer, in order
            rows = client.get(f"/api/v1/projects/{pid}/annotations", headers=admin.headers).json()["items"]
            names = {u["id"]: u["name"] for u in client.get("/api/v1/users", headers=admin.headers).json()}
            return sorted((r["image_id"], names[r["annotator_id"]], r["label"]) for r in rows if r["is_current"])

        assert current() == sorted(
            [(first, "ls-5", truth[first]), (first, "ls-6", truth[first]), (second, "ls-5", "2")]
        )
        assert len(ls.requests) == 2  # each task's image fetched once

        deleted = client.post(hook, json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2}]}, headers=auth)
        assert deleted.status_code == 201
        assert current() == sorted([(first, "ls-5", truth[first]), (second, "ls-5", "2")])

        unknown = client.post(hook, json={"action": "PROJECT_UPDATED", "project": {"id": 7}}, headers=auth)
        assert (unknown.status_code, unknown.json()) == (200, {"status": "Unknown event"})
        assert client.post(hook, json={"action": "START_TRAINING"}, headers=basic("nope")).status_code == 401
        assert (
            client.post(hook, json={"action": "START_TRAINING", "project": {"id": 7}}, headers=auth).status_code == 201
        )
        app.state.labelstudio_events.drain(30)
        jobs = client.get(f"/api/v1/projects/{pid}/jobs", headers=admin.headers).json()
        assert [(j["kind"], j["params"]["trigger"]) for j in jobs] == [("train", "labelstudio")]
        assert client.post(f"/labelstudio/{pid}/setup", json={"schema": CONFIG}, headers=auth).json() == {
            "model_version": "no-model"
        }
        # No model yet: no predictions, so Label Studio asks again later instead of keeping an empty one.
        nothing = client.post(f"/labelstudio/{pid}/predict", json={"tasks": [], "label_config": CONFIG}, headers=auth)
        assert nothing.json() == {"results": []}


def test_a_link_needs_a_plain_server_url_and_a_config_that_maps(client, admin):
    project = client.post("/api/v1/projects", json={"name": "cats", "labels": ["cat", "dog"]}, headers=admin.headers)
    pid = project.json()["id"]
    for url in ("ftp://ls:21", "http://ls:8080/path", "http://user:pw@ls:8080", "ls:8080"):
        refused = client.put(
            f"/api/v1/projects/{pid}/labelstudio", json={"url": url, "access_token": "t"}, headers=admin.headers
        )
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_url", url
    unconnected = client.get(f"/api/v1/projects/{pid}/labelstudio", headers=admin.headers)
    assert unconnected.status_code == 409 and unconnected.json()["error"]["code"] == "not_connected"
    secret = connect(client, admin, pid, "http://127.0.0.1:9")["basic_auth_password"]
    polygon = (
        '<View><Image name="i" value="$image"/><PolygonLabels name="p" toName="i"><Label value="cat"/>'
        "</PolygonLabels></View>"
    )
    answer = client.post(f"/labelstudio/{pid}/setup", json={"schema": polygon}, headers=basic(secret))
    assert answer.status_code == 422 and "Choices" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ('<View><Image name="i" value="$image"/><Choices name="c" toName="i" choice="multiple">'
         '<Choice value="a"/></Choices></View>', 'choice="multiple"'),
        ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/></Choices>'
         '<Choices name="d" toName="i"><Choice value="b"/></Choices></View>', "several Choices"),
        ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="a"/>'
         "</RectangleLabels></View>", "<Choices"),
        ("<View><Text name=", "not a valid Label Studio config"),
    ],
)  # fmt: skip
def test_connect_refuses_a_config_it_cannot_map_and_says_why(config, why):
    from flywheel.labelstudio.connect import config_labels
    from storage.errors import InvalidInput

    with pytest.raises(InvalidInput, match=why):
        config_labels(config)
    assert config_labels(CONFIG) == [str(d) for d in range(10)]
