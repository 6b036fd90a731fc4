"""PostgreSQL's lock order in one round trip per label (``annotation.annotations.lease_next_after``): the annotator's
user row, then the answered image, then open images without waiting. Other transactions hold the rows here, so the
waits are seen as they happen; the 16-annotator run (``tests/test_labeling_concurrency.py``) checks the whole."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Connection, create_engine, text

from annotation.queue import _LEASE_IF_ROOM, _NEXT_OPEN
from storage.models import Assignment, AssignmentStatus, Image, Role, utcnow
from storage.projects import take_turns_on_project
from tests.factories import make_user
from tests.test_labeling import live_leases, next_task, rows, setup_project, submit

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # SQLite has no row locks

WAIT_SECONDS = 0.5  # long enough for a request that would not wait to have finished


@pytest.fixture
def team(app):
    return [make_user(app, f"annotator{i}", Role.annotator) for i in range(2)]


@contextmanager
def holding(database_url: str, statement: str, **params: int) -> Iterator[Connection]:
    """A transaction of another connection holding the row lock ``statement`` takes, until the block ends."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(text(statement), params)
            yield connection
    finally:
        engine.dispose()


def still_waiting(*requests: Future) -> bool:
    time.sleep(WAIT_SECONDS)
    return not any(r.done() for r in requests)


def test_a_round_trip_waits_for_the_annotators_row_before_locking_the_image(client, admin, team, app, database_url):
    project, _ = setup_project(client, admin, team, images=3)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    user_lock = "SELECT id FROM users WHERE id = :id FOR NO KEY UPDATE"
    with ThreadPoolExecutor(1) as pool, holding(database_url, user_lock, id=team[0].id):
        answered = pool.submit(submit, client, project, team[0], image_id, "cat", and_next=True)
        assert still_waiting(answered)
        # Waiting for the user row, it holds no image: another transaction may lock the answered one at once.
        with holding(database_url, "SELECT id FROM images WHERE id = :id FOR UPDATE NOWAIT", id=image_id):
            pass
    answer = answered.result(timeout=30)
    assert answer.status_code == 201
    assert [a.image_id for a in live_leases(app, team[0])] == [answer.json()["next_task"]["image_id"]]


def test_one_annotators_requests_take_turns_while_the_answered_image_is_locked(client, admin, team, app, database_url):
    project, _ = setup_project(client, admin, team, images=4)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    with ThreadPoolExecutor(2) as pool:
        with holding(database_url, "SELECT id FROM images WHERE id = :id FOR UPDATE", id=image_id):
            answered = pool.submit(submit, client, project, team[0], image_id, "cat", and_next=True)
            time.sleep(WAIT_SECONDS)  # the round trip holds the user row, waiting for the image
            asked = pool.submit(next_task, client, project, team[0])
            assert still_waiting(answered, asked)  # the second waits for the user row: no lease behind its back
        answer, task = answered.result(timeout=30), asked.result(timeout=30)
    assert answer.status_code == 201 and task.status_code == 200
    assert task.json()["image_id"] == answer.json()["next_task"]["image_id"]  # the same task: one lease
    assert [a.image_id for a in live_leases(app, team[0])] == [task.json()["image_id"]]


def test_a_lease_is_taken_only_while_the_image_has_room_and_passed_images_are_left(client, admin, team, app):
    """The two statements of the leasing step's race (another request took the last place after the open image was
    read): the lease counts others' live leases afresh, and the next look leaves out the images passed over."""
    project, image_ids = setup_project(client, admin, team, images=3)
    taken = next_task(client, project, team[1]).json()["image_id"]  # labels_needed 1: no room left for another
    now = utcnow()
    lease = {
        "project_id": project["id"],
        "annotator_id": team[0].id,
        "leased_at": now,
        "status": AssignmentStatus.leased,
        "expires_at": now + timedelta(minutes=5),
        "updated_at": now,
        "label_count": 0,
        "labels_needed": 1,
    }
    with app.state.runtime.db.session() as session:
        connection = session.connection()
        assert _LEASE_IF_ROOM.rows(connection, {**lease, "image_id": taken}) == []
        params = {"project_id": project["id"], "annotator_id": team[0].id, "now": now}
        first = _NEXT_OPEN.first(connection, {**params, "passed": [taken]})
        assert first is not None
        second = _NEXT_OPEN.first(connection, {**params, "passed": [taken, first[0]]})
        assert second is not None and {first[0], second[0]} == set(image_ids) - {taken}
        assert _NEXT_OPEN.first(connection, {**params, "passed": image_ids}) is None
        assert len(_LEASE_IF_ROOM.rows(connection, {**lease, "image_id": first[0]})) == 1
        # An expired lease counts for nobody.
        session.execute(
            Assignment.__table__.update()
            .where(Assignment.image_id == taken)
            .values(expires_at=now - timedelta(seconds=1))
        )
        assert len(_LEASE_IF_ROOM.rows(connection, {**lease, "image_id": taken})) == 1
    leased = rows(app, Assignment, Assignment.annotator_id == team[0].id)
    assert sorted(a.image_id for a in leased) == sorted([first[0], taken])


def test_labels_go_on_while_a_decision_holds_the_project(client, admin, team, app):
    """A job decision, an exclusion or a canary holds the project row (``take_turns_on_project``) while it may wait
    for images; a label holding its image must not then wait for the project row (its inserts' foreign-key checks),
    or the two deadlock."""
    project, _ = setup_project(client, admin, team, images=3)
    image_id = next_task(client, project, team[0]).json()["image_id"]
    with ThreadPoolExecutor(1) as pool, app.state.runtime.db.session() as deciding:
        take_turns_on_project(deciding, project_id=project["id"])
        answered = pool.submit(submit, client, project, team[0], image_id, "cat", and_next=True)
        answer = answered.result(timeout=30 * WAIT_SECONDS)  # with FOR UPDATE it waits until the decision ends
        deciding.rollback()
    assert answer.status_code == 201
    assert [a.image_id for a in live_leases(app, team[0])] == [answer.json()["next_task"]["image_id"]]


def test_a_round_trip_passes_over_a_gold_image_another_transaction_holds(client, admin, team, app, database_url):
    project, image_ids = setup_project(client, admin, team, images=3, settings={"gold_rate": 1.0})
    answered_id = next_task(client, project, team[0]).json()["image_id"]  # no gold yet: an open image
    gold_id = next(i for i in image_ids if i != answered_id)
    gold = {"image_id": gold_id, "label": "dog"}
    assert client.put(f"/api/v1/projects/{project['id']}/gold", json=gold, headers=admin.headers).status_code == 200
    with (
        ThreadPoolExecutor(1) as pool,
        holding(database_url, "SELECT id FROM images WHERE id = :id FOR UPDATE", id=gold_id),
    ):
        answered = pool.submit(submit, client, project, team[0], answered_id, "cat", and_next=True)
        # Holding the answered image, it must not wait for the gold one (a refit holding it may wait for ours).
        answer = answered.result(timeout=30 * WAIT_SECONDS)
    assert answer.status_code == 201
    assert answer.json()["next_task"]["image_id"] not in (answered_id, gold_id)


def test_a_round_trip_lets_its_image_go_before_waiting_for_images_others_are_leasing(
    client, admin, team, app, database_url
):
    project, image_ids = setup_project(client, admin, team, images=2)
    answered_id = next_task(client, project, team[0]).json()["image_id"]
    (other_id,) = set(image_ids) - {answered_id}
    with ThreadPoolExecutor(1) as pool:
        with holding(database_url, "SELECT id FROM images WHERE id = :id FOR UPDATE", id=other_id):
            answered = pool.submit(submit, client, project, team[0], answered_id, "cat", and_next=True)
            assert still_waiting(answered)  # the only open image is another transaction's: it pauses for it ...
            # ... its answer stored and its image let go (the other transaction may be waiting for that image)
            with holding(database_url, "SELECT id FROM images WHERE id = :id FOR UPDATE NOWAIT", id=answered_id):
                pass
        answer = answered.result(timeout=30)
    assert answer.status_code == 201
    assert answer.json()["next_task"]["image_id"] == other_id  # leased once the other transaction ended
    assert [a.image_id for a in live_leases(app, team[0])] == [other_id]


STRICTER = {"settings": {"review_posterior": 1.0}}  # from 0.0: every posterior under 1 is weak


def fitted_project_and_an_unlabeled_image(client, admin, team, app) -> tuple[dict, int]:
    """A project whose consensus is a Dawid-Skene fit (posteriors under 1) with review_posterior 0.0 (none weak),
    and an image leased to ``team[1]`` that nobody has labeled."""
    settings = {"review_posterior": 0.0, "overlap_rate": 1.0, "overlap_k": 2, "auto_review": False}
    project, _ = setup_project(client, admin, team, images=21, settings=settings)
    for annotator in team:  # twenty images labeled by both: the overlap a Dawid-Skene fit needs
        for n in range(20):
            image = next_task(client, project, annotator).json()["image_id"]
            assert submit(client, project, annotator, image, ("cat", "dog", "bird")[n % 3]).status_code == 201
    fit = client.post(f"/api/v1/projects/{project['id']}/consensus", headers=admin.headers)
    assert fit.json()["method"] == "dawid_skene"
    image_id = next_task(client, project, team[1]).json()["image_id"]
    assert rows(app, Image, Image.id == image_id)[0].label_count == 0
    return project, image_id


def judged_under_the_stricter_setting(app, image_id: int) -> bool:
    (image,) = rows(app, Image, Image.id == image_id)
    assert image.consensus_label == "dog" and image.consensus_posterior is not None
    return image.consensus_posterior < 1.0 and image.consensus_weak


def test_a_label_is_judged_under_settings_changed_while_it_waited_for_its_annotator(
    client, admin, team, app, database_url
):
    """A review_posterior change that commits while a submission waits for its annotator's row (the access
    statement, which reads the settings from the snapshot it started with) re-marks the image before the submission
    holds it; the submission reads the settings again after the image's lock and judges under the new ones."""
    project, image_id = fitted_project_and_an_unlabeled_image(client, admin, team, app)
    user_lock = "SELECT id FROM users WHERE id = :id FOR NO KEY UPDATE"
    with ThreadPoolExecutor(1) as pool, holding(database_url, user_lock, id=team[1].id):
        answered = pool.submit(submit, client, project, team[1], image_id, "dog", and_next=True)  # locks the user
        assert still_waiting(answered)
        changed = client.patch(f"/api/v1/projects/{project['id']}/settings", json=STRICTER, headers=admin.headers)
        assert changed.status_code == 200
    assert answered.result(timeout=30).status_code == 201
    assert judged_under_the_stricter_setting(app, image_id)


def test_a_settings_change_waits_for_a_label_that_read_the_old_settings_and_judges_its_image(
    client, admin, team, app, database_url
):
    """The other order: a submission has locked its image and read the old settings when the change runs. The
    change's re-marking waits for that image (unlabeled as far as it can see) and judges the row the label commits."""
    project, image_id = fitted_project_and_an_unlabeled_image(client, admin, team, app)
    (lease,) = live_leases(app, team[1])
    lease_lock = "SELECT id FROM assignments WHERE id = :id FOR UPDATE"  # the submission's write closes this lease
    with ThreadPoolExecutor(2) as pool:
        with holding(database_url, lease_lock, id=lease.id):
            answered = pool.submit(submit, client, project, team[1], image_id, "dog")
            assert still_waiting(answered)  # its image locked, the old settings read, its writes waiting
            url = f"/api/v1/projects/{project['id']}/settings"
            changed = pool.submit(client.patch, url, json=STRICTER, headers=admin.headers)
            assert still_waiting(changed)  # the re-marking waits for the image the submission holds
        assert answered.result(timeout=30).status_code == 201
        assert changed.result(timeout=30).status_code == 200
    assert judged_under_the_stricter_setting(app, image_id)
