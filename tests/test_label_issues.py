"""Label issues: a ``label_quality`` job cross-validates the project's model on its training snapshot,
cleanlab ranks the likely-wrong labels, and a selection goes back to annotators through review."""

from __future__ import annotations

import numpy as np
import pytest
from cleanlab.filter import find_label_issues
from sqlalchemy import select

from annotation.label_issues import RELABEL_REASON, find_issues
from flywheel.jobs.rows import create_job
from storage.models import Annotation, Image, JobKind, JobStatus, Role, Split
from tests.digits import digit_project, label_digits
from tests.factories import make_user
from tests.jobs import run

pytestmark = pytest.mark.slow


def run_job(app, client, account, project, **params) -> dict:
    created = client.post(
        f"/api/v1/projects/{project['id']}/jobs",
        json={"kind": "label_quality", "params": params},
        headers=account.headers,
    )
    assert created.status_code == 201, created.text
    run(app, created.json()["id"])
    return client.get(f"/api/v1/jobs/{created.json()['id']}", headers=account.headers).json()


def test_wrong_labels_are_found_ranked_and_sent_back_for_relabeling(app, client, admin):
    engineer, annotator, reviewer = (
        make_user(app, name, role)
        for name, role in (("eng", Role.engineer), ("ann", Role.annotator), ("rev", Role.annotator))
    )
    project, truth = digit_project(
        client,
        admin,
        engineer,
        annotator,
        reviewer,
        count=400,
        training={"patience": 10, "input_size": 16, "batch_size": 16},
    )
    with app.state.runtime.db.session() as session:
        train_ids = sorted(i.id for i in session.query(Image).filter(Image.split == Split.train))
    wrong = set(np.random.default_rng(0).choice(train_ids, 20, replace=False).tolist())
    label_digits(client, project, annotator, truth, 400, wrong=wrong)

    done = run_job(app, client, engineer, project, folds=3, epochs=30)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["images"] == len(train_ids) and result["folds"] == 3 and result["epochs"] == 30
    assert result["filter_by"] == "prune_by_class" and result["snapshot_id"] is not None
    assert result["cross_validated_accuracy"] > 0.7 and done["progress"] == 1.0

    page = client.get(f"/api/v1/projects/{project['id']}/label-issues", headers=engineer.headers).json()
    issues = page["items"]
    assert len(issues) == result["issues"] and [i["rank"] for i in issues] == list(range(1, len(issues) + 1))
    assert [i["score"] for i in issues] == sorted(i["score"] for i in issues)
    found = {i["image_id"] for i in issues}
    assert len(found & wrong) >= 15  # most of the 20 flipped labels, from a model trained on ~200 images
    assert sum(i["image_id"] in wrong for i in issues[:10]) >= 8  # and the worst-ranked are nearly all wrong
    top = issues[0]
    assert top["image_id"] in wrong and top["given_label"] == top["current_label"] != truth[top["image_id"]]
    assert top["suggested_label"] != top["given_label"] and top["sent_for_review_at"] is None
    flagged_wrong = [i for i in issues if i["image_id"] in wrong]
    assert sum(i["suggested_label"] == truth[i["image_id"]] for i in flagged_wrong) >= 0.7 * len(flagged_wrong)
    second_page = client.get(
        f"/api/v1/projects/{project['id']}/label-issues", params={"limit": 2, "after_rank": 1}, headers=engineer.headers
    ).json()
    assert [i["rank"] for i in second_page["items"]] == [2, 3] and second_page["next_after_rank"] == 3

    selected = [i["image_id"] for i in issues[:3]]
    sent = client.post(
        f"/api/v1/projects/{project['id']}/label-issues/relabel", json={"image_ids": selected}, headers=engineer.headers
    )
    assert sent.status_code == 200 and sorted(sent.json()["queued"]) == sorted(selected)
    task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=reviewer.headers).json()
    assert task["image_id"] in selected and task["review_reason"] == RELABEL_REASON
    after = client.get(f"/api/v1/projects/{project['id']}/label-issues", headers=engineer.headers).json()["items"]
    assert {i["image_id"] for i in after if i["sent_for_review_at"]} == set(selected)


def test_a_project_with_too_few_labels_fails_the_job_with_a_reason(app, client, admin):
    engineer, annotator = make_user(app, "eng", Role.engineer), make_user(app, "ann", Role.annotator)
    project, truth = digit_project(client, admin, engineer, annotator, count=12)
    label_digits(client, project, annotator, truth, 12)
    done = run_job(app, client, engineer, project, folds=5)
    assert done["status"] == JobStatus.failed.value
    assert "label quality needs at least 10 labeled training images" in done["error"]
    # The API refuses bad params (tests/test_job_params.py); a job stored by another path is held to the same bounds.
    with app.state.runtime.db.session() as session:
        stored = create_job(
            session,
            project_id=project["id"],
            kind=JobKind.label_quality,
            transport=app.state.runtime.transport,
            params={"trigger": "schedule", "folds": 50, "filter_by": "guess"},
            enqueue=False,
        ).id
    assert run(app, stored) == JobStatus.failed
    error = client.get(f"/api/v1/jobs/{stored}", headers=engineer.headers).json()["error"]
    assert "invalid job params: folds: Input should be less than or equal to 20; filter_by: Input should be" in error


def test_the_ranking_is_cleanlabs_flagged_set_worst_first():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    probabilities = rng.dirichlet(np.ones(3) * 0.3, size=120) * 0.3
    probabilities[np.arange(120), labels] += 0.7
    flipped = rng.choice(120, 12, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 3
    issues = find_issues(given, probabilities)
    expected = np.flatnonzero(find_label_issues(given, probabilities, filter_by="prune_by_class"))
    assert sorted(i.index for i in issues) == sorted(expected.tolist())
    assert [i.score for i in issues] == sorted(probabilities[i.index, i.given] for i in issues)
    assert all(i.suggested != i.given for i in issues)
    assert len({i.index for i in issues} & set(flipped.tolist())) >= 9  # most of the 12 flipped labels
    with pytest.raises(ValueError, match="unknown filter"):
        find_issues(given, probabilities, filter_by="magic")


def test_box_label_issues_find_a_dropped_a_swapped_and_a_shifted_box(detector):
    """The shared detection project with three answers spoilt (a box dropped, a class swapped, a box shifted by half
    its width): K-fold detectors and cleanlab's ObjectLab rank those three images first, each with its kind."""
    app, client, project, engineer = detector.app, detector.client, detector.project, detector.engineer
    path = f"/api/v1/projects/{project['id']}"
    with app.state.runtime.db.session() as session:
        answers = {
            a.image_id: a
            for a in session.scalars(
                select(Annotation)
                .join(Image, Image.id == Annotation.image_id)
                .where(Annotation.project_id == project["id"], Annotation.is_current, Image.split == Split.train)
                .order_by(Annotation.image_id)
            )
        }
        several = [i for i, a in answers.items() if len(a.boxes or []) >= 2]
        dropped, swapped, shifted = several[0], several[1], next(i for i in answers if i not in several[:2])
        boxes = answers[dropped].boxes or []
        answers[dropped].boxes = boxes[1:]
        first, *rest = answers[swapped].boxes or []
        answers[swapped].boxes = [{**first, "label": "disc" if first["label"] == "square" else "square"}, *rest]
        first, *rest = answers[shifted].boxes or []
        step = first["w"] / 2 if first["x"] + 1.5 * first["w"] <= 64 else -first["w"] / 2
        answers[shifted].boxes = [{**first, "x": first["x"] + step}, *rest]
        planted = {
            dropped: ("overlooked", boxes[0]),
            swapped: ("swap", answers[swapped].boxes[0]),
            shifted: ("badloc", answers[shifted].boxes[0]),
        }

    progress: list[float] = []
    created = client.post(
        f"{path}/jobs",
        json={"kind": "label_quality", "params": {"folds": 3, "epochs": 8, "score_below": 0.8}},
        headers=engineer.headers,
    )
    assert created.status_code == 201, created.text
    run(app, created.json()["id"], on_progress=lambda p, _message: progress.append(p))
    done = client.get(f"/api/v1/jobs/{created.json()['id']}", headers=engineer.headers).json()
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert (result["task"], result["folds"], result["epochs"], result["images"]) == ("detection", 3, 8, len(answers))
    assert progress == sorted(progress) and any(0.15 < p < 0.95 for p in progress) and done["progress"] == 1.0

    issues = client.get(f"{path}/label-issues", headers=engineer.headers).json()["items"]
    assert [i["score"] for i in issues] == sorted(i["score"] for i in issues) and len(issues) == result["issues"]
    top = {i["image_id"]: i for i in issues[:3]}
    assert set(top) == set(planted), (planted, issues[:5])
    for image_id, (kind, box) in planted.items():
        issue = top[image_id]
        assert issue["issue_type"] == kind and set(issue["type_scores"]) == {"overlooked", "swap", "badloc"}
        assert issue["type_scores"][kind] == min(issue["type_scores"].values()) < 0.5
        assert abs(issue["box"]["x"] - box["x"]) < 4 and abs(issue["box"]["y"] - box["y"]) < 4
        assert issue["current_boxes"] is not None and issue["current_label"] is None
    box_label = planted[swapped][1]["label"]
    other = "square" if box_label == "disc" else "disc"
    assert (top[swapped]["given_label"], top[swapped]["suggested_label"]) == (box_label, other)
    assert top[dropped]["given_label"] == "" and top[dropped]["suggested_label"] == planted[dropped][1]["label"]

    sent = client.post(f"{path}/label-issues/relabel", json={"image_ids": [dropped, swapped]}, headers=engineer.headers)
    assert sent.status_code == 200 and sorted(sent.json()["queued"]) == sorted([dropped, swapped])
    with app.state.runtime.db.read_session() as session:
        reasons = {
            i.id: i.review_reason for i in session.scalars(select(Image).where(Image.id.in_([dropped, swapped])))
        }
    assert reasons[dropped].startswith(f"a model finds a {planted[dropped][1]['label']!r} at x=")
    assert "as a " in reasons[swapped] and reasons[swapped].endswith("; check the boxes")
