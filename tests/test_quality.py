"""Label quality over HTTP: a simulated crowd labels a project through the queue; the agreement report,
the scorecards and their flags, consensus refits, automatic review, exclusions and admin resolution."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from annotation.reports import human_reference
from storage.models import Image, Role
from tests import imagefactory as img
from tests.factories import make_project, make_user

LABELS = ["1", "3", "7", "9"]


def api(project: dict, path: str) -> str:
    return f"/api/v1/projects/{project['id']}{path}"


def upload(client, admin, project, count: int, start: int = 0) -> list[int]:
    files = [("files", (f"{i}.png", img.png(8, 8, color=(i % 256, i // 256, 9)))) for i in range(start, start + count)]
    response = client.post(api(project, "/images"), files=files, headers=admin.headers)
    assert response.status_code == 201, response.text
    return [f["image_id"] for f in response.json()["files"]]


class Annotator:
    """Answers from the hidden true label: right with ``accuracy``, or a habit (uniform guessing, 7 as 1)."""

    def __init__(self, account, *, accuracy: float = 1.0, habit: str | None = None, seed: int = 0) -> None:
        self.account, self.accuracy, self.habit = account, accuracy, habit
        self.rng = random.Random(seed)

    def answer(self, truth: str) -> str:
        if self.habit == "spammer":
            return self.rng.choice(LABELS)
        if self.habit == "seven-as-one" and truth == "7":
            return "1"
        if self.rng.random() < self.accuracy:
            return truth
        return self.rng.choice([label for label in LABELS if label != truth])


def label_until_done(client, project, crowd: list[Annotator], truth: dict[int, str]) -> dict[str, int]:
    """Annotators take turns asking for a task and answering it, until the queue has nothing for anyone."""
    done: set[str] = set()
    served: dict[str, int] = {}
    while len(done) < len(crowd):
        for annotator in crowd:
            name = annotator.account.name
            if name in done:
                continue
            task = client.get(api(project, "/tasks/next"), headers=annotator.account.headers)
            if task.status_code == 204:
                done.add(name)
                continue
            image_id = task.json()["image_id"]
            body = {"image_id": image_id, "label": annotator.answer(truth[image_id])}
            response = client.post(api(project, "/annotations"), json=body, headers=annotator.account.headers)
            assert response.status_code == 201, response.text
            served[name] = served.get(name, 0) + 1
    return served


@pytest.fixture
def crowd(app):
    accounts = [make_user(app, name, Role.annotator) for name in ("ann", "bea", "cid", "spammer", "confuser")]
    return [
        Annotator(accounts[0], accuracy=0.95, seed=1),
        Annotator(accounts[1], accuracy=0.95, seed=2),
        Annotator(accounts[2], accuracy=0.9, seed=3),
        Annotator(accounts[3], habit="spammer", seed=4),
        Annotator(accounts[4], accuracy=0.97, habit="seven-as-one", seed=5),
    ]


def cards_by_name(client, project, account) -> dict[str, dict]:
    response = client.get(api(project, "/annotators"), headers=account.headers)
    assert response.status_code == 200, response.text
    return {card["name"]: card for card in response.json()["annotators"]}


@pytest.mark.slow
def test_a_simulated_crowd_is_measured_flagged_and_its_weak_images_get_more_labels(client, app, admin, engineer, crowd):
    project = make_project(
        client,
        admin,
        engineer,
        *(a.account for a in crowd),
        labels=LABELS,
        settings={"overlap_rate": 1.0, "overlap_k": 3, "gold_rate": 0.0},
    )
    image_ids = upload(client, admin, project, 100)
    rng = random.Random(0)
    truth = {image_id: rng.choice(LABELS) for image_id in image_ids}
    served = label_until_done(client, project, crowd, truth)
    assert min(served.values()) >= 50  # enough overlapped labels each for flags

    cards = cards_by_name(client, project, engineer)
    flags = {name: {f["flag"]: f for f in card["flags"]} for name, card in cards.items()}
    assert set(flags["spammer"]) >= {"random", "unreliable"}
    assert "chance alone gives" in flags["spammer"]["random"]["evidence"]
    confusion = flags["confuser"]["systematic_confusion"]
    assert (confusion["details"]["true_label"], confusion["details"]["given_label"]) == ("7", "1")
    assert confusion["details"]["rate"] >= 0.9 and confusion["details"]["others_rate"] < 0.25
    assert confusion["evidence"].startswith("labels 7 as 1 in ")
    assert confusion["details"]["estimated_rate"] > 0.8  # Dawid-Skene's own confusion matrix agrees
    assert "random" not in flags["confuser"] and "unreliable" not in flags["confuser"]
    assert all(not flags[name] for name in ("ann", "bea", "cid")), flags
    spammer, ann = cards["spammer"], cards["ann"]
    assert spammer["estimated_accuracy"] < 0.45 < 0.85 < ann["estimated_accuracy"]
    assert len(ann["confusion"]) == 4 and all(abs(sum(row) - 1) < 1e-9 for row in ann["confusion"])
    assert ann["speed"]["source"] == "lease" and ann["speed"]["samples"] == ann["labels"]
    assert ann["agreement_with_consensus"] > 0.85 and ann["overlapped_labels"] == ann["labels"]
    assert ann["member"] and not ann["excluded"] and ann["gold_answered"] == 0 and ann["gold_accuracy"] is None

    report = client.get(api(project, "/agreement"), headers=engineer.headers).json()
    assert report["reason"] is None and report["items"] == 100
    assert 0.2 < report["fleiss_kappa"]["value"] < 0.9 and report["fleiss_kappa"]["reading"].count(":") == 1
    assert report["krippendorff_alpha"]["items"] == 100
    assert [c["label"] for c in report["per_class"]] == LABELS
    by_pair = {frozenset((p["annotator_a"]["name"], p["annotator_b"]["name"])): p for p in report["pairs"]}
    assert abs(by_pair[frozenset(("spammer", "ann"))]["cohen_kappa"]["value"]) < 0.25
    assert by_pair[frozenset(("ann", "bea"))]["cohen_kappa"]["value"] > 0.7
    assert all(p["shared"] >= report["min_shared_items"] for p in report["pairs"])
    human = report["human_reference"]
    accuracy_of = {a["name"]: a["accuracy"] for a in human["annotators"]}
    assert human["items"] > 5 and human["reason"] is None and accuracy_of["spammer"] < accuracy_of["ann"]
    with app.state.runtime.db.read_session() as session:
        assert human_reference(session, project["id"]) == human  # what the model card shows

    # Ties during labeling went to a fourth annotator, and got their label.
    with app.state.runtime.db.session() as session:
        images = list(session.scalars(select(Image).where(Image.id.in_(image_ids))))
        majority_accuracy = sum(i.consensus_label == truth[i.id] for i in images) / len(images)
        reviewed = [i for i in images if i.label_count > 3]
        assert reviewed and all(i.labels_needed == i.label_count and i.queue_tier is None for i in reviewed)
        assert all(i.consensus_posterior is None for i in images)  # majority vote until the first fit

    # Refit: training's label becomes Dawid-Skene's, which outvotes the confuser on the 7s.
    summary = client.post(api(project, "/consensus"), headers=engineer.headers).json()
    assert summary["method"] == "dawid_skene" and summary["images"] == 100
    assert summary["changed"] == summary["differs_from_majority"] > 0
    with app.state.runtime.db.session() as session:
        images = list(session.scalars(select(Image).where(Image.id.in_(image_ids))))
        accuracy = sum(i.consensus_label == truth[i.id] for i in images) / len(images)
        assert all(0.25 <= i.consensus_posterior <= 1 for i in images)
    assert accuracy > majority_accuracy

    # Between refits, a lone label from the spammer is not trusted: the image is sent to someone else.
    client.patch(api(project, "/settings"), json={"settings": {"overlap_rate": 0.0}}, headers=admin.headers)
    upload(client, admin, project, 3, start=500)
    task = client.get(api(project, "/tasks/next"), headers=crowd[3].account.headers).json()
    client.post(
        api(project, "/annotations"),
        json={"image_id": task["image_id"], "label": "9"},
        headers=crowd[3].account.headers,
    )
    labels = client.get(api(project, "/labels"), params={"after": max(image_ids)}, headers=engineer.headers).json()
    item = next(i for i in labels["items"] if i["image_id"] == task["image_id"])
    assert (item["label_count"], item["labels_needed"]) == (1, 2)
    second = client.get(api(project, "/tasks/next"), headers=crowd[0].account.headers).json()
    assert (second["image_id"], second["review_reason"]) == (
        task["image_id"],
        "the label is uncertain; an independent label is needed",
    )


def test_agreement_without_overlap_or_with_one_annotator_is_200_with_empty_figures(client, admin, engineer, annotator):
    project = make_project(client, admin, engineer, annotator, settings={"overlap_rate": 0.0, "gold_rate": 0.0})
    empty = client.get(api(project, "/agreement"), headers=engineer.headers)
    assert empty.status_code == 200
    assert empty.json()["reason"].startswith("needs two annotators")
    upload(client, admin, project, 2)
    for _ in range(2):
        task = client.get(api(project, "/tasks/next"), headers=annotator.headers).json()
        client.post(
            api(project, "/annotations"), json={"image_id": task["image_id"], "label": "cat"}, headers=annotator.headers
        )
    one = client.get(api(project, "/agreement"), headers=engineer.headers).json()
    assert one["reason"] == "needs two annotators; 1 has labeled (excluded annotators left out)"
    assert one["fleiss_kappa"] == {"value": None, "items": 0, "reading": None, "reason": one["reason"], "note": None}
    assert one["pairs"] == [] and one["per_class"] == []

    other = make_user(client.app, "other", Role.annotator)
    client.post(api(project, "/members"), json={"user_id": other.id}, headers=admin.headers)
    upload(client, admin, project, 1, start=50)
    task = client.get(api(project, "/tasks/next"), headers=other.headers).json()
    client.post(
        api(project, "/annotations"), json={"image_id": task["image_id"], "label": "dog"}, headers=other.headers
    )
    two = client.get(api(project, "/agreement"), headers=engineer.headers).json()
    assert two["reason"].startswith("no image has labels from two annotators yet")
    assert two["krippendorff_alpha"]["value"] is None and two["items"] == 0
    assert two["human_reference"]["reason"] is not None
    cards = client.get(api(project, "/annotators"), headers=engineer.headers).json()
    assert cards["consensus_method"] == "majority" and cards["reason"].startswith("only 0 images")
    assert all(card["flags"] == [] for card in cards["annotators"])  # too little evidence to judge anyone


def test_a_removed_annotator_still_counts_until_an_admin_excludes_them_which_is_recorded(client, app, admin, engineer):
    team = [make_user(app, name, Role.annotator) for name in ("ann", "bea", "cid")]
    project = make_project(
        client, admin, engineer, *team, settings={"overlap_rate": 1.0, "overlap_k": 2, "gold_rate": 0.0}
    )
    image_ids = upload(client, admin, project, 6)
    # ann and bea agree on cat everywhere; cid labels alone afterwards, with dog.
    crowd = [Annotator(team[0]), Annotator(team[1])]
    label_until_done(client, project, crowd, dict.fromkeys(image_ids, "cat"))
    client.patch(api(project, "/settings"), json={"settings": {"overlap_rate": 0.0}}, headers=admin.headers)
    solo = upload(client, admin, project, 2, start=100)
    label_until_done(client, project, [Annotator(team[2])], dict.fromkeys(solo, "dog"))

    def current_labels():
        items = client.get(api(project, "/labels"), headers=engineer.headers).json()["items"]
        return {i["image_id"]: i["label"] for i in items}

    assert client.delete(api(project, f"/members/{team[2].id}"), headers=admin.headers).status_code == 204
    assert {current_labels()[i] for i in solo} == {"dog"}  # removal keeps their labels in consensus
    history = client.get(api(project, "/annotations"), params={"annotator_id": team[2].id}, headers=admin.headers)
    assert len(history.json()["items"]) == 2
    assert cards_by_name(client, project, engineer)["cid"]["member"] is False

    refused = client.post(
        api(project, f"/annotators/{team[2].id}/exclusion"), json={"reason": "x"}, headers=engineer.headers
    )
    assert refused.status_code == 403
    excluded = client.post(
        api(project, f"/annotators/{team[2].id}/exclusion"), json={"reason": "labels at random"}, headers=admin.headers
    )
    assert excluded.status_code == 201, excluded.text
    assert excluded.json()["consensus"]["excluded_annotators"] == 1
    assert all(i not in current_labels() for i in solo)  # no usable label left on their images
    again = client.post(
        api(project, f"/annotators/{team[2].id}/exclusion"), json={"reason": "x"}, headers=admin.headers
    )
    assert again.status_code == 409
    # Their images lost every usable label, so they go back to the queue for someone else.
    task = client.get(api(project, "/tasks/next"), headers=team[0].headers).json()
    assert task["image_id"] in solo and task["review_reason"].startswith("the labels given so far do not count")
    card = cards_by_name(client, project, engineer)["cid"]
    assert card["excluded"] and card["exclusion"]["reason"] == "labels at random"
    assert card["exclusion"]["excluded_by_id"] == admin.id

    restored = client.delete(api(project, f"/annotators/{team[2].id}/exclusion"), headers=admin.headers)
    assert restored.status_code == 200 and restored.json()["exclusion"]["revoked_by_id"] == admin.id
    assert {current_labels()[i] for i in solo} == {"dog"}
    assert client.delete(api(project, f"/annotators/{team[2].id}/exclusion"), headers=admin.headers).status_code == 409
    record = client.get(api(project, "/exclusions"), headers=engineer.headers).json()
    assert [(e["annotator_id"], e["excluded_by_id"], e["revoked_at"] is not None) for e in record] == [
        (team[2].id, admin.id, True)
    ]


def test_a_tie_goes_to_more_annotators_up_to_the_cap_and_an_admin_resolution_is_a_gold_answer(
    client, app, admin, engineer
):
    team = [make_user(app, name, Role.annotator) for name in ("ann", "bea", "cid", "dan")]
    settings = {"overlap_rate": 1.0, "overlap_k": 2, "gold_rate": 0.0, "review_max_labels": 3}
    project = make_project(client, admin, engineer, *team, settings=settings)
    [image_id] = upload(client, admin, project, 1)
    for account, label in zip(team[:3], ("cat", "dog", "bird"), strict=True):
        task = client.get(api(project, "/tasks/next"), headers=account.headers).json()
        assert task["image_id"] == image_id
        client.post(api(project, "/annotations"), json={"image_id": image_id, "label": label}, headers=account.headers)
    assert client.get(api(project, "/tasks/next"), headers=team[3].headers).status_code == 204  # capped at 3
    weak = client.get(api(project, "/consensus/weak"), headers=engineer.headers).json()["items"]
    assert weak == [
        {"image_id": image_id, "label": "cat", "posterior": None, "tie": True, "label_count": 3,
         "votes": {"cat": 1, "dog": 1, "bird": 1}}
    ]  # fmt: skip

    resolved = client.put(api(project, "/gold"), json={"image_id": image_id, "label": "dog"}, headers=admin.headers)
    assert resolved.status_code == 200
    assert client.get(api(project, "/consensus/weak"), headers=engineer.headers).json()["items"] == []
    scores = {
        s["name"]: (s["answered"], s["correct"])
        for s in client.get(api(project, "/gold/scores"), headers=admin.headers).json()
    }
    assert scores == {"ann": (1, 0), "bea": (1, 1), "cid": (1, 0)}
    cards = cards_by_name(client, project, engineer)
    assert (cards["bea"]["gold_answered"], cards["bea"]["gold_accuracy"]) == (1, 1.0)
