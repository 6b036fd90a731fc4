"""Labeling over HTTP: the task queue, leases, overlap, gold questions, review, submissions and corrections."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import event, select, update

from service.schemas.labeling import AnnotationAndNext
from storage.models import Annotation, Assignment, AssignmentStatus, Image, Prediction, Role, utcnow
from tests import imagefactory as img
from tests.factories import make_project, make_user

pytestmark = pytest.mark.postgres  # behaviour that can differ by dialect

NO_GOLD = {"gold_rate": 0.0, "overlap_rate": 0.0}


@pytest.fixture
def team(app):
    return [make_user(app, f"annotator{i}", Role.annotator) for i in range(4)]


def setup_project(client, admin, members, *, images=4, settings=None, labels=("cat", "dog", "bird")):
    project = make_project(client, admin, *members, labels=list(labels), settings={**NO_GOLD, **(settings or {})})
    files = [("files", (f"{i}.png", img.png(8, 8, color=(i, 7, 9)))) for i in range(images)]
    uploaded = client.post(f"/api/v1/projects/{project['id']}/images", files=files, headers=admin.headers)
    assert uploaded.status_code == 201
    return project, [f["image_id"] for f in uploaded.json()["files"]]


def next_task(client, project, account):
    return client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=account.headers)


def submit(client, project, account, image_id, label, key=None, *, and_next=False, **extra):
    headers = {**account.headers, **({"Idempotency-Key": key} if key else {})}
    body = {"image_id": image_id, "label": label, **extra}
    params = {"next": "true"} if and_next else {}
    return client.post(f"/api/v1/projects/{project['id']}/annotations", json=body, headers=headers, params=params)


def label_all(client, project, account, label="cat"):
    labeled = []
    while (task := next_task(client, project, account)).status_code == 200:
        image_id = task.json()["image_id"]
        assert submit(client, project, account, image_id, label).status_code == 201
        labeled.append(image_id)
    assert task.status_code == 204
    return labeled


def rows(app, model, *conditions):
    with app.state.runtime.db.session() as session:
        return list(session.scalars(select(model).where(*conditions)))


def test_next_task_leases_an_image_and_repeats_it_until_answered(client, admin, team):
    project, image_ids = setup_project(client, admin, team)
    first = next_task(client, project, team[0])
    assert first.status_code == 200
    task = first.json()
    assert task["image_id"] in image_ids
    assert task["content_url"] == f"/api/v1/images/{task['image_id']}/content"
    assert task["prelabel"] is None and task["review_reason"] is None
    assert next_task(client, project, team[0]).json()["image_id"] == task["image_id"]


def test_concurrent_annotators_get_different_images(client, admin, team):
    project, image_ids = setup_project(client, admin, team)
    served = [next_task(client, project, a).json()["image_id"] for a in team]
    assert sorted(served) == sorted(image_ids)
    extra = make_user(client.app, "latecomer", Role.annotator)
    client.post(f"/api/v1/projects/{project['id']}/members", json={"user_id": extra.id}, headers=admin.headers)
    assert next_task(client, project, extra).status_code == 204  # every image is leased


def test_an_annotator_never_gets_an_image_they_labeled_and_204_ends_the_queue(client, admin, team):
    project, image_ids = setup_project(client, admin, team)
    assert sorted(label_all(client, project, team[0])) == sorted(image_ids)
    assert next_task(client, project, team[1]).status_code == 204


def test_the_queue_is_a_deterministic_shuffle_by_priority(client, admin, team, app):
    project, image_ids = setup_project(client, admin, team, images=6)
    order = label_all(client, project, team[0])
    priorities = {i.id: i.priority for i in rows(app, Image, Image.id.in_(image_ids))}
    assert order == sorted(image_ids, key=lambda i: priorities[i], reverse=True)


def test_an_expired_lease_returns_to_the_pool(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=1)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    assert next_task(client, project, team[1]).status_code == 204
    with app.state.runtime.db.session() as session:
        session.execute(update(Assignment).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert next_task(client, project, team[1]).json()["image_id"] == image_id


def test_a_late_submission_after_someone_else_labeled_is_a_409_and_stores_nothing(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=1)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    with app.state.runtime.db.session() as session:
        session.execute(update(Assignment).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert next_task(client, project, team[1]).json()["image_id"] == image_id
    assert submit(client, project, team[1], image_id, "dog").status_code == 201
    late = submit(client, project, team[0], image_id, "cat")
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "lease_lost"
    assert [a.label for a in rows(app, Annotation, Annotation.image_id == image_id)] == ["dog"]


def test_a_late_submission_is_kept_when_nobody_took_the_image(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=1)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    with app.state.runtime.db.session() as session:
        session.execute(update(Assignment).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert submit(client, project, team[0], image_id, "cat").status_code == 201


def test_idempotent_retries_store_one_row(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=1)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    first = submit(client, project, team[0], image_id, "cat", key="retry-1", duration_ms=1500)
    again = submit(client, project, team[0], image_id, "cat", key="retry-1", duration_ms=1500)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    assert len(rows(app, Annotation)) == 1
    different = submit(client, project, team[0], image_id, "dog", key="retry-1")
    assert different.status_code == 422
    assert different.json()["error"]["code"] == "idempotency_key_reused"
    assert len(rows(app, Annotation)) == 1


def live_leases(app, annotator):
    return rows(
        app,
        Assignment,
        Assignment.annotator_id == annotator.id,
        Assignment.status == AssignmentStatus.leased,
        Assignment.expires_at > utcnow(),
    )


def test_one_round_trip_per_label_serves_the_queue_in_the_order_of_two_calls(client, admin, team, app):
    project, image_ids = setup_project(client, admin, team, images=6, settings={"overlap_rate": 1.0, "overlap_k": 2})
    two_calls = label_all(client, project, team[0])
    task = next_task(client, project, team[1]).json()
    one_call = []
    while task is not None:
        one_call.append(task["image_id"])
        answer = submit(client, project, team[1], task["image_id"], "cat", and_next=True)
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert set(body) == {"annotation", "next_task"}
        assert (body["annotation"]["image_id"], body["annotation"]["label"]) == (one_call[-1], "cat")
        task = body["next_task"]
        if task is not None:  # leased already: asking the two-call way returns the same task
            assert next_task(client, project, team[1]).json() == task
            assert [a.image_id for a in live_leases(app, team[1])] == [task["image_id"]]
    assert one_call == two_calls and sorted(one_call) == sorted(image_ids)
    assert next_task(client, project, team[1]).status_code == 204
    assert len(rows(app, Annotation, Annotation.annotator_id == team[1].id)) == 6
    assert next_task(client, project, team[2]).status_code == 204  # every image has its two (agreeing) labels


def test_a_retried_round_trip_stores_once_and_never_holds_two_leases(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=4)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    first = submit(client, project, team[0], image_id, "cat", key="k1", and_next=True)
    again = submit(client, project, team[0], image_id, "cat", key="k1", and_next=True)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()  # the same annotation and the same next task
    held = first.json()["next_task"]["image_id"]
    assert [a.image_id for a in live_leases(app, team[0])] == [held]
    # The held lease ends before the retry arrives: the retry leases a fresh task, still only one.
    with app.state.runtime.db.session() as session:
        session.execute(update(Assignment).values(expires_at=utcnow() - timedelta(seconds=1)))
    late = submit(client, project, team[0], image_id, "cat", key="k1", and_next=True)
    assert late.status_code == 200 and late.json()["annotation"] == first.json()["annotation"]
    assert [a.image_id for a in live_leases(app, team[0])] == [late.json()["next_task"]["image_id"]]
    assert len(rows(app, Annotation)) == 1


def test_a_round_trip_answering_another_image_returns_the_task_still_held(client, admin, team, app):
    project, image_ids = setup_project(client, admin, team, images=3)
    held = next_task(client, project, team[0]).json()["image_id"]
    other = next(i for i in image_ids if i != held)
    answer = submit(client, project, team[0], other, "cat", and_next=True)
    assert answer.status_code == 201 and answer.json()["next_task"]["image_id"] == held
    assert [a.image_id for a in live_leases(app, team[0])] == [held]


def test_a_refused_round_trip_stores_nothing_and_leases_nothing(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=2)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    refused = submit(client, project, team[0], image_id, "zebra", and_next=True)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_label"
    assert rows(app, Annotation) == []
    assert [a.image_id for a in live_leases(app, team[0])] == [image_id]  # the task still held, nothing more
    last = submit(client, project, team[0], image_id, "cat", and_next=True).json()["next_task"]
    assert submit(client, project, team[0], last["image_id"], "cat", and_next=True).json()["next_task"] is None


# The statements one label costs through the HTTP API, pinned: a change that adds one fails here
# (bench/labeling_scale.py measures the CPU). Round trip on SQLite: BEGIN, access (token, membership and project),
# the image with its situation (answers, lease, key, team, a lease held on another image: SQLite's one writer needs no
# row lock first), the answer, the lease closed, the image's new state, then in the same transaction (so no second
# look for a held lease) the first open image with where its pre-label comes from (a champion? else the stored
# prediction: without a model no read transaction follows the commit; with one, its inference runs in one, holding no
# lock), and the new lease. PostgreSQL begins implicitly, locks the annotator's user row with the access statement,
# locks the image before reading its situation, writes the answer, the lease closed and the image's state in one
# statement (writable CTEs), and takes the lease only if the image still has room once its row is locked (one
# INSERT ... SELECT), all in one transaction.
ROUND_TRIP_STATEMENTS = {"sqlite": 8, "postgresql": 6}


def test_one_round_trip_label_costs_a_pinned_number_of_statements(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=6)
    engine = app.state.runtime.db.engine
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    def counted(call) -> tuple[httpx.Response, int]:
        statements.clear()
        return call(), len(statements)

    task, for_next = counted(lambda: next_task(client, project, team[0]))
    image_id = task.json()["image_id"]
    answer, for_submit = counted(lambda: submit(client, project, team[0], image_id, "cat", key=f"two-{image_id}"))
    assert answer.status_code == 201
    image_id = next_task(client, project, team[0]).json()["image_id"]
    both, for_one_trip = counted(lambda: submit(client, project, team[0], image_id, "cat", key="one", and_next=True))
    assert both.status_code == 201 and both.json()["next_task"] is not None
    AnnotationAndNext.model_validate(both.json())  # the hand-off answer keeps to its documented shape
    assert for_one_trip == ROUND_TRIP_STATEMENTS[engine.dialect.name], statements
    assert for_one_trip < for_next + for_submit, (for_one_trip, for_next, for_submit)


def test_a_rotated_token_a_removed_member_and_a_new_setting_count_at_once(client, admin, team, app):
    """The labeling routes check the token and the membership on every request (nothing about access is cached);
    the project's settings they reuse are keyed by their stored text, so a change counts at once."""
    project, _ = setup_project(client, admin, team, images=6)
    task = next_task(client, project, team[0]).json()
    patched = client.patch(
        f"/api/v1/projects/{project['id']}/settings", json={"settings": {"lease_minutes": 1}}, headers=admin.headers
    )
    assert patched.status_code == 200
    answer = submit(client, project, team[0], task["image_id"], "cat", and_next=True).json()
    lease = datetime.fromisoformat(answer["next_task"]["lease_expires_at"]) - utcnow()
    assert timedelta(seconds=30) < lease <= timedelta(minutes=1)
    rotated = client.post(f"/api/v1/users/{team[1].id}/token", headers=admin.headers)
    assert rotated.status_code in (200, 201)
    assert next_task(client, project, team[1]).status_code == 401
    new_token = {"Authorization": f"Bearer {rotated.json()['token']}"}
    assert client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=new_token).status_code == 200
    removed = client.delete(f"/api/v1/projects/{project['id']}/members/{team[2].id}", headers=admin.headers)
    assert removed.status_code == 204
    assert next_task(client, project, team[2]).status_code == 404
    assert submit(client, project, team[2], task["image_id"], "cat").status_code == 404


def test_a_correction_supersedes_and_history_is_kept(client, admin, team, engineer):
    project, _ = setup_project(client, admin, [*team, engineer], images=1)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    first = submit(client, project, team[0], image_id, "cat").json()
    fixed = submit(client, project, team[0], image_id, "bird").json()
    assert fixed["supersedes_id"] == first["id"]
    history = client.get(
        f"/api/v1/projects/{project['id']}/images/{image_id}/annotations", headers=engineer.headers
    ).json()
    assert [(a["label"], a["is_current"]) for a in history] == [("cat", False), ("bird", True)]
    labels = client.get(f"/api/v1/projects/{project['id']}/labels", headers=engineer.headers).json()["items"]
    assert [(item["label"], item["label_count"]) for item in labels] == [("bird", 1)]


@pytest.mark.parametrize(
    ("label", "status", "code"),
    [("zebra", 422, "unknown_label"), ("", 422, "invalid_request"), ("Cat", 422, "unknown_label")],
)
def test_labels_outside_the_set_are_refused_naming_the_valid_ones(client, admin, team, app, label, status, code):
    project, _ = setup_project(client, admin, team, images=1)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    response = submit(client, project, team[0], image_id, label)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    if code == "unknown_label":
        assert "cat, dog, bird" in response.json()["error"]["message"]
    assert rows(app, Annotation) == []


def test_another_projects_image_and_non_members_get_404(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=1)
    _, other_images = setup_project(client, admin, team, images=1)
    wrong_project = submit(client, project, team[0], other_images[0], "cat")
    assert wrong_project.status_code == 404 and wrong_project.json()["error"]["code"] == "image_not_found"
    outsider = make_user(app, "outsider", Role.annotator)
    assert next_task(client, project, outsider).status_code == 404
    assert submit(client, project, outsider, other_images[0], "cat").status_code == 404
    assert rows(app, Annotation) == []


def test_skip_releases_the_lease_to_others_and_a_flood_of_skips_is_refused(client, admin, team, app):
    project, _ = setup_project(client, admin, team, images=1)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    url = f"/api/v1/projects/{project['id']}/tasks/{image_id}/skip"
    assert client.post(url, headers=team[0].headers).status_code == 204
    for _ in range(5):
        again = client.post(url, headers=team[0].headers)
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_leased"
    assert client.post(url, headers=team[1].headers).status_code == 409  # never served to them
    assert next_task(client, project, team[0]).status_code == 204  # not served again to who skipped
    assert next_task(client, project, team[1]).json()["image_id"] == image_id
    assert rows(app, Annotation) == []


def test_overlapped_images_get_k_independent_labels_from_different_annotators(client, admin, team, app):
    project, image_ids = setup_project(client, admin, team, images=2, settings={"overlap_rate": 1.0, "overlap_k": 3})
    votes = {"annotator0": "cat", "annotator1": "dog", "annotator2": "dog", "annotator3": "bird"}
    for annotator in team[:3]:
        assert len(label_all(client, project, annotator, votes[annotator.name])) == 2
    assert next_task(client, project, team[3]).status_code == 204  # each image has its 3 labels
    for image_id in image_ids:
        current = rows(app, Annotation, Annotation.image_id == image_id, Annotation.is_current)
        assert len({a.annotator_id for a in current}) == 3
    image = rows(app, Image, Image.id == image_ids[0])[0]
    assert (image.consensus_label, image.consensus_tie, image.queue_tier) == ("dog", False, None)


def test_an_annotator_sees_only_their_own_labels(client, admin, team):
    project, image_ids = setup_project(client, admin, team, images=1, settings={"overlap_rate": 1.0, "overlap_k": 2})
    label_all(client, project, team[0], "cat")
    label_all(client, project, team[1], "dog")
    mine = client.get(f"/api/v1/projects/{project['id']}/annotations", headers=team[1].headers).json()["items"]
    assert [a["label"] for a in mine] == ["dog"]
    history = client.get(
        f"/api/v1/projects/{project['id']}/images/{image_ids[0]}/annotations", headers=team[1].headers
    ).json()
    assert [a["label"] for a in history] == ["dog"]
    everyone = client.get(f"/api/v1/projects/{project['id']}/annotations", headers=admin.headers).json()["items"]
    assert sorted(a["label"] for a in everyone) == ["cat", "dog"]
    assert client.get(f"/api/v1/projects/{project['id']}/labels", headers=team[0].headers).status_code == 403


def test_a_tie_is_flagged_and_resolved_by_label_order(client, admin, team, engineer):
    project, _ = setup_project(
        client, admin, [*team, engineer], images=1, settings={"overlap_rate": 1.0, "overlap_k": 2}
    )
    label_all(client, project, team[0], "bird")
    label_all(client, project, team[1], "dog")
    item = client.get(f"/api/v1/projects/{project['id']}/labels", headers=engineer.headers).json()["items"][0]
    assert (item["label"], item["tie"]) == ("dog", True)  # dog comes before bird in the label set


def test_partly_labeled_overlap_images_come_before_fresh_ones(client, admin, team, app):
    project, image_ids = setup_project(client, admin, team, images=3, settings={"overlap_rate": 1.0, "overlap_k": 2})
    first = next_task(client, project, team[0]).json()["image_id"]
    submit(client, project, team[0], first, "cat")
    assert next_task(client, project, team[1]).json()["image_id"] == first


def test_gold_questions_are_served_and_scored_per_annotator(client, admin, team, app):
    project, image_ids = setup_project(client, admin, team, images=3, settings={"gold_rate": 1.0})
    gold_id = image_ids[0]
    marked = client.put(
        f"/api/v1/projects/{project['id']}/gold", json={"image_id": gold_id, "label": "dog"}, headers=admin.headers
    )
    assert marked.status_code == 200
    for annotator, answer in ((team[0], "dog"), (team[1], "cat")):
        task = next_task(client, project, annotator).json()
        assert task["image_id"] == gold_id
        assert set(task) == {
            "image_id", "project_id", "content_url", "thumbnail_url", "width", "height",
            "lease_expires_at", "review_reason", "prelabel", "prelabel_boxes",
        }  # fmt: skip
        assert submit(client, project, annotator, gold_id, answer).status_code == 201
        assert next_task(client, project, annotator).json()["image_id"] != gold_id  # each gold once
    scores = client.get(f"/api/v1/projects/{project['id']}/gold/scores", headers=admin.headers).json()
    by_name = {s["name"]: s for s in scores}
    assert (by_name["annotator0"]["correct"], by_name["annotator0"]["accuracy"]) == (1, 1.0)
    assert (by_name["annotator1"]["answered"], by_name["annotator1"]["accuracy"]) == (1, 0.0)
    unknown = client.put(
        f"/api/v1/projects/{project['id']}/gold", json={"image_id": gold_id, "label": "zebra"}, headers=admin.headers
    )
    assert unknown.status_code == 422


def test_images_sent_for_review_come_first_to_someone_else_with_the_reason(client, admin, team, engineer):
    project, image_ids = setup_project(client, admin, [*team, engineer], images=3)
    labeled = next_task(client, project, team[0]).json()["image_id"]
    submit(client, project, team[0], labeled, "cat")
    sent = client.post(
        f"/api/v1/projects/{project['id']}/review",
        json={"image_ids": [labeled], "reason": "looks like a dog"},
        headers=engineer.headers,
    )
    assert sent.json() == {"queued": [labeled]}
    task = next_task(client, project, team[1]).json()
    assert (task["image_id"], task["review_reason"]) == (labeled, "looks like a dog")
    assert next_task(client, project, team[0]).json()["image_id"] != labeled
    submit(client, project, team[1], labeled, "dog")
    item = next(
        i
        for i in client.get(f"/api/v1/projects/{project['id']}/labels", headers=engineer.headers).json()["items"]
        if i["image_id"] == labeled
    )
    # The answers tie, so automatic review asks a third annotator, without hinting at either label.
    assert (item["label_count"], item["labels_needed"], item["tie"]) == (2, 3, True)
    task = next_task(client, project, team[2]).json()
    assert (task["image_id"], task["review_reason"]) == (labeled, "annotators disagree; an independent label is needed")


def test_the_newest_model_prediction_is_the_prelabel(client, admin, team, app):
    project, image_ids = setup_project(client, admin, team, images=1)
    with app.state.runtime.db.session() as session:
        session.add(Prediction(image_id=image_ids[0], model_version="v1", label="cat", confidence=0.6))
        session.add(Prediction(image_id=image_ids[0], model_version="v2", label="dog", confidence=0.93))
    task = next_task(client, project, team[0]).json()
    assert task["prelabel"] == {"label": "dog", "confidence": 0.93, "model_version": "v2", "fallback": False}


def test_the_round_trips_next_task_carries_its_prelabel_read_with_the_lease(client, admin, team, app):
    project, image_ids = setup_project(client, admin, team, images=2)
    with app.state.runtime.db.session() as session:
        for image_id, label in zip(image_ids, ("cat", "bird"), strict=True):
            session.add(Prediction(image_id=image_id, model_version="v1", label=label, confidence=0.7))
    first = next_task(client, project, team[0]).json()
    second = submit(client, project, team[0], first["image_id"], "cat", and_next=True).json()["next_task"]
    expected = {image_ids[0]: "cat", image_ids[1]: "bird"}[second["image_id"]]
    assert second["prelabel"] == {"label": expected, "confidence": 0.7, "model_version": "v1", "fallback": False}
    assert next_task(client, project, team[0]).json() == second  # the held task, its pre-label read on its own


def test_progress_counts_for_the_page(client, admin, team):
    project, _ = setup_project(client, admin, team, images=3)
    task = next_task(client, project, team[0]).json()
    submit(client, project, team[0], task["image_id"], "cat")
    progress = client.get(f"/api/v1/projects/{project['id']}/progress", headers=team[0].headers).json()
    reasons = [
        {"code": "open", "images": 2, "message": "2 images wait for annotators who have not been served them yet"}
    ]
    assert progress == {"images": 3, "waiting": 2, "done": 1, "labeled_by_you": 1, "waiting_reasons": reasons}


def test_overlap_asks_for_no_more_annotators_than_the_project_has_and_progress_says_what_waits(
    client, admin, team, app
):
    """overlap_k 3 with two annotator members: two labels finish an image; a third member brings the images back.
    An image every member labeled or skipped is reported as waiting for a new member, not silently."""
    project, image_ids = setup_project(
        client, admin, team[:2], images=3, settings={"overlap_rate": 1.0, "overlap_k": 3}
    )
    url = f"/api/v1/projects/{project['id']}/progress"

    def progress(account):
        answer = client.get(url, headers=account.headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert progress(team[0])["waiting_reasons"] == [
        {"code": "open", "images": 3, "message": "3 images wait for annotators who have not been served them yet"}
    ]
    label_all(client, project, team[0], "cat")
    skipped = next_task(client, project, team[1]).json()["image_id"]
    assert (
        client.post(f"/api/v1/projects/{project['id']}/tasks/{skipped}/skip", headers=team[1].headers).status_code
        == 204
    )
    assert len(label_all(client, project, team[1], "cat")) == 2
    seen = progress(team[1])
    assert (seen["images"], seen["waiting"], seen["done"], seen["labeled_by_you"]) == (3, 1, 2, 2)
    assert seen["waiting_reasons"] == [
        {
            "code": "needs_annotator",
            "images": 1,
            "message": "1 image needs a second annotator: all 2 annotator members labeled or skipped it; "
            "add an annotator to the project to finish it",
        }
    ]

    members = f"/api/v1/projects/{project['id']}/members"
    assert client.post(members, json={"user_id": team[2].id}, headers=admin.headers).status_code == 201
    assert progress(team[2])["waiting"] == 3  # a third member: the overlap of 3 is reachable again
    assert sorted(label_all(client, project, team[2], "dog")) == sorted(image_ids)
    assert progress(team[2])["waiting"] == 1  # the skipped image still needs a third label
    assert client.delete(f"{members}/{team[2].id}", headers=admin.headers).status_code == 204
    after = progress(team[0])
    assert (after["waiting"], after["done"], after["waiting_reasons"]) == (0, 3, [])
    counts = {i.id: i.label_count for i in rows(app, Image, Image.project_id == project["id"])}
    assert counts == {i: (2 if i == skipped else 3) for i in image_ids}
