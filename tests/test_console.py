"""The console: its pages and the read endpoints behind them, and every page walked in headless Chromium on the
shared trained champion with a simulated crowd, each action checked in the database afterwards."""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import delete, func, select, update

from storage.models import (
    Annotation,
    AnnotatorExclusion,
    Assignment,
    Image,
    Job,
    JobKind,
    JobStatus,
    LabelIssue,
    ModelKind,
    ModelStatus,
    ModelVersion,
    Project,
    ProjectCount,
    Role,
    Schedule,
    Split,
    User,
)
from storage.projects import compact_counts
from tests import imagefactory as img
from tests.conftest import unavailable
from tests.digits import digit_project, digits, label_digits
from tests.factories import make_project, make_user
from tests.jobs import run
from tests.test_webpage import CHROMIUM, CHROMIUM_ARGS, note_console_error

SCREENSHOTS = Path(__file__).resolve().parent.parent / "bench" / "out" / "console"


def test_the_console_pages_are_served_under_the_pages_policy(client, app):
    for path in ("/", "/projects/1/overview", "/projects/7/models", "/projects/1/people"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        policy = page.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy
        assert not re.search(r"(https?:)?//", page.text)  # nothing from a CDN
    assert client.get("/projects/1/nope").status_code == 422
    assert client.get("/projects/0/overview").status_code == 422
    for asset in ("console.js", "console-draw.js", "console.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert not any(path == "/" or path.startswith("/projects") for path in app.openapi()["paths"])


@pytest.mark.postgres
def test_overview_counts_images_by_state_labels_per_class_day_and_annotator(app, client, admin, annotator):
    second = make_user(app, "ann2", Role.annotator)  # review needs an annotator who has not labeled the image
    project, truth = digit_project(client, admin, annotator, second, count=30)
    pid = project["id"]
    label_digits(client, project, annotator, truth, 12)
    labeled = client.get(f"/api/v1/projects/{pid}/labels", headers=admin.headers).json()["items"]
    review = client.post(
        f"/api/v1/projects/{pid}/review",
        json={"image_ids": [labeled[0]["image_id"]], "reason": "look again"},
        headers=admin.headers,
    )
    assert review.json()["queued"] == [labeled[0]["image_id"]], review.text

    figures = client.get(f"/api/v1/projects/{pid}/overview", headers=admin.headers)
    assert figures.status_code == 200, figures.text
    body = figures.json()
    images = body["images"]
    assert images["total"] == 30 and images["unlabeled"] == 18 and images["review"] == 1 and images["done"] == 11
    assert images["overlap"] == 0 and sum(images["split"].values()) == 30
    with app.state.runtime.db.session() as session:
        rows = session.scalars(select(Image).where(Image.project_id == pid)).all()
        expected = {label: {"train": 0, "test": 0} for label in project["labels"]}
        for image in rows:
            if image.consensus_label:
                expected[image.consensus_label][image.split.value] += 1
    assert [c["label"] for c in body["classes"]] == project["labels"]
    assert {c["label"]: {"train": c["train"], "test": c["test"]} for c in body["classes"]} == expected
    assert len(body["days"]) == 1 and body["days"][0]["labels"] == 12
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", body["days"][0]["day"])
    assert body["annotators"] == [{"annotator_id": annotator.id, "name": annotator.name, "labels": 12}]

    queue = client.get(f"/api/v1/projects/{pid}/queue?limit=3", headers=admin.headers).json()
    assert queue["strategy"] == project["settings"]["mining"]["strategy"]
    first = queue["items"][0]
    assert first["image_id"] == labeled[0]["image_id"] and first["tier"] == "review" and first["why"] == "look again"
    assert [q["tier"] for q in queue["items"][1:]] == ["fresh", "fresh"]
    served = client.get(f"/api/v1/projects/{pid}/tasks/next", headers=admin.headers).json()
    assert served["image_id"] == first["image_id"]  # what the preview says comes next does

    assert client.get(f"/api/v1/projects/{pid}/learning-curve", headers=admin.headers).json() == []
    for path in ("overview", "queue", "learning-curve"):
        assert client.get(f"/api/v1/projects/{pid}/{path}", headers=annotator.headers).status_code == 403
    assert client.get(f"/api/v1/projects/{pid}/queue?limit=0", headers=admin.headers).status_code == 422


def counted_directly(app, project: dict) -> dict:
    """The console's figures counted over the project's rows here, as the API must give them."""
    states = {"total": 0, "unlabeled": 0, "overlap": 0, "review": 0, "done": 0, "split": {"train": 0, "test": 0}}
    classes = {label: {"label": label, "train": 0, "test": 0} for label in project["labels"]}
    days: Counter[str] = Counter()
    annotators: Counter[int] = Counter()
    threshold = project["settings"]["review_posterior"]
    with app.state.runtime.db.session() as session:
        images = session.scalars(select(Image).where(Image.project_id == project["id"]).order_by(Image.id)).all()
        for image in images:
            state = "done" if image.queue_tier is None else "review" if image.queue_tier == 1 else None
            state = state or ("overlap" if image.label_count else "unlabeled")
            states["total"], states[state] = states["total"] + 1, states[state] + 1
            states["split"][image.split.value] += 1
            if image.consensus_label:
                classes[image.consensus_label][image.split.value] += 1
        weak = [
            i.id
            for i in images
            if i.label_count and i.gold_label is None and i.queue_tier is None
            and (i.consensus_tie or i.consensus_label is None or (i.consensus_posterior or threshold) < threshold)
        ]  # fmt: skip
        for answer in session.scalars(select(Annotation).where(Annotation.project_id == project["id"])):
            days[answer.created_at.astimezone(UTC).date().isoformat()] += 1
            annotators[answer.annotator_id] += answer.is_current
    return {
        "images": states,
        "classes": list(classes.values()),
        "days": [{"day": day, "labels": n} for day, n in sorted(days.items())],
        "annotators": sorted(((a, n) for a, n in annotators.items() if n), key=lambda a: (-a[1], a[0])),
        "weak": weak,
    }


def assert_counts_match(app, client, admin, project: dict) -> None:
    pid = project["id"]
    expected = counted_directly(app, project)
    figures = client.get(f"/api/v1/projects/{pid}/overview", headers=admin.headers).json()
    assert figures["images"] == expected["images"]
    assert figures["classes"] == expected["classes"]
    assert figures["days"] == expected["days"]
    assert [(a["annotator_id"], a["labels"]) for a in figures["annotators"]] == expected["annotators"]
    progress = client.get(f"/api/v1/projects/{pid}/progress", headers=admin.headers).json()
    images = expected["images"]
    assert (progress["images"], progress["done"]) == (images["total"], images["done"])
    assert progress["waiting"] == images["total"] - images["done"]
    with app.state.runtime.db.read_session() as session:  # what the waiting reasons read (migration 0016's trigger)
        served = session.execute(
            select(Image.id, Image.assignment_count, func.count(Assignment.id))
            .outerjoin(Assignment, Assignment.image_id == Image.id)
            .where(Image.project_id == pid)
            .group_by(Image.id, Image.assignment_count)
        ).all()
    assert served and all(kept == rows for _, kept, rows in served)
    weak = client.get(f"/api/v1/projects/{pid}/consensus/weak?limit=2", headers=admin.headers).json()
    pages = [i["image_id"] for i in weak["items"]]
    while weak["next_after"] is not None:
        after = weak["next_after"]
        weak = client.get(f"/api/v1/projects/{pid}/consensus/weak?limit=2&after={after}", headers=admin.headers).json()
        pages += [i["image_id"] for i in weak["items"]]
    assert pages == expected["weak"]


def fold_counts(app, project_id: int) -> None:
    """The worker's upkeep step: the project's count rows folded into one per item. On PostgreSQL a label inserted
    in a transaction still open during the fold counts once it commits, and the fold does not wait for it."""
    db = app.state.runtime.db
    postgres = db.engine.dialect.name == "postgresql"
    with contextlib.ExitStack() as still_open:
        if postgres:
            writer = still_open.enter_context(db.session())
            answer = writer.scalars(select(Annotation).where(Annotation.project_id == project_id).limit(1)).one()
            flip = update(Annotation).where(Annotation.id == answer.id)
            writer.execute(flip.values(is_current=not answer.is_current))  # its trigger's row: uncommitted
        with db.session() as session:
            assert compact_counts(session, project_id=project_id) > 0
        if postgres:
            writer.execute(flip.values(is_current=answer.is_current))  # back: counts right only if both rows count
    with db.session() as session:
        compact_counts(session, project_id=project_id)
        rows = session.execute(
            select(ProjectCount.figure, ProjectCount.item, func.count())
            .where(ProjectCount.project_id == project_id)
            .group_by(ProjectCount.figure, ProjectCount.item)
        ).all()
    assert rows and all(n == 1 for _, _, n in rows)  # one row per item


@pytest.mark.postgres
def test_the_console_counts_equal_the_rows_through_uploads_labels_review_exclusion_refit_split_and_deletion(
    app, client, admin
):
    """The counts the triggers keep (migration 0016) and the weak-consensus flag, against a count over the rows
    after each kind of change, before and after the upkeep folds the count rows; split changes and deletions have
    no endpoint, so they are made in SQL."""
    team = [make_user(app, name, Role.annotator) for name in ("ann", "bea", "cid")]
    settings = {"overlap_rate": 1.0, "overlap_k": 2, "gold_rate": 0.0, "review_max_labels": 3}
    project = make_project(client, admin, *team, settings=settings)
    pid, rng = project["id"], random.Random(0)

    def api(path: str) -> str:
        return f"/api/v1/projects/{pid}{path}"

    files = [("files", (f"{i}.png", img.png(8, 8, color=(i, 40, 9)))) for i in range(22)]  # 20 for Dawid-Skene
    image_ids = [f["image_id"] for f in client.post(api("/images"), files=files, headers=admin.headers).json()["files"]]
    assert_counts_match(app, client, admin, project)
    served = True
    while served:  # every image gets its two labels, a tie a third
        served = False
        for account in team:
            task = client.get(api("/tasks/next"), headers=account.headers)
            if task.status_code == 200:
                served, answer = True, {"image_id": task.json()["image_id"], "label": rng.choice(project["labels"])}
                assert client.post(api("/annotations"), json=answer, headers=account.headers).status_code == 201
    assert_counts_match(app, client, admin, project)
    fold_counts(app, pid)
    assert_counts_match(app, client, admin, project)
    labeled = client.get(api("/labels"), headers=admin.headers).json()["items"]
    first = labeled[0]["image_id"]
    correction = {"image_id": first, "label": next(x for x in project["labels"] if x != labeled[0]["label"])}
    history = client.get(api(f"/images/{first}/annotations"), headers=admin.headers).json()
    author = next(a for a in team if a.id == history[0]["annotator_id"])
    assert client.post(api("/annotations"), json=correction, headers=author.headers).status_code == 201
    review = {"image_ids": [labeled[1]["image_id"]], "reason": "look again"}
    assert client.post(api("/review"), json=review, headers=admin.headers).is_success
    gold = {"image_id": labeled[2]["image_id"], "label": "bird"}
    assert client.put(api("/gold"), json=gold, headers=admin.headers).status_code == 200
    assert_counts_match(app, client, admin, project)
    excluded = client.post(api(f"/annotators/{team[0].id}/exclusion"), json={"reason": "t"}, headers=admin.headers)
    assert excluded.status_code == 201, excluded.text
    assert_counts_match(app, client, admin, project)
    assert client.delete(api(f"/annotators/{team[0].id}/exclusion"), headers=admin.headers).is_success
    assert client.post(api("/consensus"), headers=admin.headers).status_code == 200
    assert_counts_match(app, client, admin, project)
    for threshold in (1.0, 0.0):  # every posterior under 1 is weak, then only ties and lost labels
        patched = client.patch(
            api("/settings"), json={"settings": {"review_posterior": threshold}}, headers=admin.headers
        )
        assert patched.status_code == 200, patched.text
        project = patched.json()
        assert_counts_match(app, client, admin, project)
        if threshold == 1.0:
            assert counted_directly(app, project)["weak"]  # the refit's posteriors are all under 1
    with app.state.runtime.db.session() as session:
        session.execute(update(Image).where(Image.id.in_(image_ids[:4])).values(split=Split.test))
        session.execute(delete(Image).where(Image.id.in_([first, image_ids[-1]])))
    assert_counts_match(app, client, admin, project)
    fold_counts(app, pid)
    assert_counts_match(app, client, admin, project)
    with app.state.runtime.db.session() as session:  # no route deletes a project; the triggers must let it go
        session.execute(delete(Project).where(Project.id == pid))
    with app.state.runtime.db.read_session() as session:
        assert session.scalar(select(func.count()).where(ProjectCount.project_id == pid)) == 0


def test_a_rotated_token_replaces_the_old_one_and_only_admins_rotate(app, client, admin, engineer, annotator):
    refused = client.post(f"/api/v1/users/{annotator.id}/token", headers=engineer.headers)
    assert refused.status_code == 403
    assert client.post("/api/v1/users/999/token", headers=admin.headers).json()["error"]["code"] == "user_not_found"
    rotated = client.post(f"/api/v1/users/{annotator.id}/token", headers=admin.headers)
    assert rotated.status_code == 200 and rotated.json()["name"] == annotator.name
    assert client.get("/api/v1/users/me", headers=annotator.headers).status_code == 401
    fresh = {"Authorization": f"Bearer {rotated.json()['token']}"}
    assert client.get("/api/v1/users/me", headers=fresh).json()["id"] == annotator.id


def test_the_learning_curve_holds_each_version_with_labels_metric_and_decision(trained):
    client, pid = trained.client, trained.project["id"]
    curve = client.get(f"/api/v1/projects/{pid}/learning-curve", headers=trained.engineer.headers).json()
    card = client.get(f"/api/v1/models/{trained.champion_id}", headers=trained.engineer.headers).json()
    (point,) = curve
    assert point["model_id"] == trained.champion_id and point["status"] == "champion" and point["promoted"]
    assert point["labels"] == card["snapshot"]["item_count"] == 150
    assert point["metric"] == "test_accuracy" and point["value"] == card["metrics"]["test_accuracy"]
    assert point["baseline"] == card["metrics"]["baseline_accuracy"]
    assert point["reason"] == card["decision"]["reason"] and point["promotions"] == card["decision"]["promotions"]


@pytest.mark.postgres
def test_the_learning_curve_reads_a_detectors_metric_and_an_unevaluated_version(app, client, admin):
    """JSON fields read by each dialect: a detector's mAP as its headline, a version still training without one."""
    project = make_project(client, admin)
    with app.state.runtime.db.session() as session:
        base = {"project_id": project["id"], "kind": ModelKind.full, "architecture": "x", "input_size": 8, "labels": []}
        decision = {"promote": True, "rule": "not worse", "reason": "r", "p_value": 0.25, "promotions": [{"at": "t"}]}
        session.add(ModelVersion(**base, status=ModelStatus.candidate, metrics={"map50": 0.75}, decision=decision))
        session.add(ModelVersion(**base, status=ModelStatus.training))
    curve = client.get(f"/api/v1/projects/{project['id']}/learning-curve", headers=admin.headers).json()
    assert [(p["metric"], p["value"], p["promoted"], p["p_value"], p["promotions"]) for p in curve] == [
        ("map50", 0.75, True, 0.25, [{"at": "t"}]),
        (None, None, False, None, []),
    ]


@contextmanager
def live(app) -> Iterator[str]:
    """The app on a loopback port in this process, so the browser and the test share one database."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and server.servers):
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def crowd(trained) -> dict[str, object]:
    """Two more annotators on the trained project: one relabels 30 of the labeled images (every fourth wrong), the
    other labels the ties this makes and fresh images; then a quick label_quality job."""
    client, admin, pid = trained.client, trained.admin, trained.project["id"]
    sloppy, careful = (
        make_user(trained.app, "sloppy", Role.annotator),
        make_user(trained.app, "careful", Role.annotator),
    )
    for user in (sloppy, careful):
        client.post(f"/api/v1/projects/{pid}/members", json={"user_id": user.id}, headers=admin.headers)
    labeled = [
        item["image_id"] for item in client.get(f"/api/v1/projects/{pid}/labels", headers=admin.headers).json()["items"]
    ]
    again = labeled[:30]
    sent = client.post(
        f"/api/v1/projects/{pid}/review", json={"image_ids": again, "reason": "second opinion"}, headers=admin.headers
    )
    assert sent.status_code == 200, sent.text
    label_digits(client, trained.project, sloppy, trained.truth, 30, wrong=set(again[::4]))
    # The ties go back for review: the third annotator answers them with a third digit, so they stay weak.
    for _ in range(20):
        image_id = client.get(f"/api/v1/projects/{pid}/tasks/next", headers=careful.headers).json()["image_id"]
        digit = int(trained.truth[image_id]) + (2 if image_id in again[::4] else 0)
        answer = {"image_id": image_id, "label": str(digit % 10)}
        assert (
            client.post(f"/api/v1/projects/{pid}/annotations", json=answer, headers=careful.headers).status_code == 201
        )
    # Dawid-Skene trusts the first annotator enough to settle even the three-way ties with a posterior above 0.99:
    # an admin asking for near certainty sees them (and others) listed as weak.
    strict = {"settings": {"review_posterior": 0.9995}}
    assert client.patch(f"/api/v1/projects/{pid}/settings", json=strict, headers=admin.headers).status_code == 200
    job = client.post(
        f"/api/v1/projects/{pid}/jobs",
        json={"kind": "label_quality", "params": {"folds": 2, "epochs": 2}},
        headers=trained.engineer.headers,
    ).json()
    assert run(trained.app, job["id"]) == JobStatus.succeeded
    return {"sloppy": sloppy, "careful": careful}


def detection_project(trained) -> tuple[int, list[int]]:
    """A detection project where one of two annotators misses the person beside each car: weak consensus boxes."""
    client, admin = trained.client, trained.admin
    pair = [make_user(trained.app, name, Role.annotator) for name in ("spotter", "misser")]
    settings = {"gold_rate": 0.0, "overlap_rate": 1.0, "overlap_k": 2}
    project = make_project(client, admin, *pair, labels=["car", "person"], task_type="detection", settings=settings)
    files = [("files", (f"{i}.png", img.png(64, 48, color=(i, 80, 20)))) for i in range(3)]
    uploaded = client.post(f"/api/v1/projects/{project['id']}/images", files=files, headers=admin.headers)
    images = [f["image_id"] for f in uploaded.json()["files"]]
    car, person = (
        {"label": "car", "x": 4, "y": 10, "w": 20, "h": 20},
        {"label": "person", "x": 30, "y": 8, "w": 12, "h": 30},
    )
    for image_id in images:
        for annotator, boxes in zip(pair, ([car, person], [car]), strict=True):
            body = {"image_id": image_id, "boxes": boxes}
            sent = client.post(f"/api/v1/projects/{project['id']}/annotations", json=body, headers=annotator.headers)
            assert sent.status_code == 201, sent.text
    return project["id"], images


def open_page(page: Page, base: str, path: str, shots: Path, name: str) -> None:
    page.goto(f"{base}{path}")
    expect(page.locator("#view")).to_have_attribute("aria-busy", "false")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=shots / f"{name}.png", full_page=True)


def done(page: Page, text: str) -> None:
    expect(page.locator("#message")).to_contain_text(text)
    expect(page.locator("#view")).to_have_attribute("aria-busy", "false")


def walk_detector_models(browser, detector, problems: list[str]) -> None:
    """A detector's Models page: mAP@.5 and mAP@[.5:.95] in the table and on the curve, the error gallery's boxes
    exactly as the database holds them (predicted from the card, consensus from the image), two versions
    compared per class."""
    pid, db = detector.project["id"], detector.app.state.runtime.db
    with db.session() as session:
        champion = session.get_one(ModelVersion, detector.champion_id)
        metrics, labels = champion.metrics, champion.labels
        # A second version to compare with: the champion's card with every class's AP halved (a row made here, as
        # the learning-curve test does; training a second detector would take most of a minute).
        halved = {k: {**v, "ap": v["ap"] / 2 if v["ap"] else v["ap"]} for k, v in metrics["per_class"].items()}
        other = ModelVersion(
            project_id=pid,
            snapshot_id=champion.snapshot_id,
            kind=ModelKind.full,
            status=ModelStatus.retired,
            architecture=champion.architecture,
            input_size=champion.input_size,
            labels=labels,
            hyperparameters=champion.hyperparameters,
            metrics={**metrics, "per_class": halved, "error_images": metrics["error_images"][1:]},
            decision={"promote": False, "rule": "below the champion", "reason": "test", "p_value": 0.5},
        )
        session.add(other)
        session.flush()
        other_id = other.id
        shown = [e for e in metrics["error_images"] if "predicted" in e]
        consensus = {e["image_id"]: session.get_one(Image, e["image_id"]).consensus_boxes for e in shown}
    assert shown, "the detector fixture makes errors on its test split"
    with live(detector.app) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda message: note_console_error(message, problems))
        page.goto(f"{base}/")
        page.get_by_label("API token").fill(detector.admin.token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator(f'tr[data-project="{pid}"]')).to_contain_text(f"mAP@.5 {metrics['test_map50']:.3f}")
        open_page(page, base, f"/projects/{pid}/models", SCREENSHOTS, "models-detection")
        cell = page.locator(f'tr[data-model="{detector.champion_id}"] td[data-map50]')
        expect(cell).to_contain_text(f"mAP@.5 {metrics['test_map50']:.3f}")
        expect(cell).to_contain_text(f"mAP@[.5:.95] {metrics['test_map']:.3f}")
        expect(page.locator(f'circle[data-model="{detector.champion_id}"]')).to_have_count(1)
        expect(page.locator(f'circle[data-map-model="{detector.champion_id}"]')).to_have_count(1)
        tiles = page.locator("#box-errors .tile")
        expect(tiles).to_have_count(len(shown))
        for n, entry in enumerate(shown[:3]):
            tile = tiles.nth(n)
            expect(tile).to_have_attribute("data-image", str(entry["image_id"]))
            for layer, boxes in (("predicted", entry["predicted"]), ("consensus", consensus[entry["image_id"]])):
                rects = tile.locator(f'rect[data-layer="{layer}"]')
                expect(rects).to_have_count(len(boxes))
                drawn = [
                    {
                        k: float(rects.nth(i).get_attribute(a))
                        for k, a in zip("xywh", ("x", "y", "width", "height"), strict=True)
                    }
                    | {"label": rects.nth(i).get_attribute("data-label")}
                    for i in range(len(boxes))
                ]
                assert drawn == [{k: box[k] for k in ("x", "y", "w", "h", "label")} for box in boxes]
        missed = [e for e in shown if e["missed"]]
        page.locator('tr[data-error="missed"]').get_by_role("button", name="show").click()
        expect(tiles).to_have_count(len(missed))
        page.locator("#compare-form button").click()
        rows = page.locator("#comparison tr[data-label]")
        expect(rows).to_have_count(len(labels))
        shown_as = lambda value: "–" if value is None else f"{value:.3f}"  # noqa: E731 - as console.js's num()
        one, two = metrics["per_class"][labels[0]], halved[labels[0]]  # the form compares the older with the newer
        expect(rows.first.locator("td")).to_have_text(
            [labels[0], *(shown_as(figures[name]) for name in ("ap50", "ap", "recall") for figures in (one, two))]
        )
        expect(page.locator("#comparison h3")).to_contain_text("(1)")  # the first error image differs
        page.screenshot(path=SCREENSHOTS / "models-detection-compare.png", full_page=True)
        page.close()
    assert other_id > detector.champion_id


@pytest.mark.slow
def test_an_admin_walks_every_page_and_steers_the_flywheel(trained, detector):
    if not CHROMIUM.exists():
        unavailable("chromium", f"{CHROMIUM} is missing; install Debian's chromium package")
    people = crowd(trained)
    pid, db = trained.project["id"], trained.app.state.runtime.db
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with live(trained.app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            annotator = browser.new_page(viewport={"width": 800, "height": 700})
            annotator.goto(f"{base}/")
            annotator.get_by_label("API token").fill(trained.annotator.token)
            annotator.get_by_role("button", name="Sign in").click()
            expect(annotator.locator(f'tr[data-project="{pid}"] a')).to_have_attribute("href", f"/label/{pid}")

            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda message: note_console_error(message, problems))
            page.goto(f"{base}/")
            page.get_by_label("API token").fill("not-a-real-token")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#sign-in-error")).to_contain_text("invalid API token")
            page.get_by_label("API token").fill(trained.admin.token)
            page.get_by_role("button", name="Sign in").click()
            row = page.locator(f'tr[data-project="{pid}"]')
            progress = trained.client.get(f"/api/v1/projects/{pid}/progress", headers=trained.admin.headers).json()
            expect(row).to_contain_text(f"{progress['done']} of 300 done")
            expect(row).to_contain_text(f"test_accuracy 1.000 (model {trained.champion_id})")
            page.screenshot(path=SCREENSHOTS / "home.png", full_page=True)

            # Overview, at 1280 and at 800 px.
            open_page(page, base, f"/projects/{pid}/overview", SCREENSHOTS, "overview")
            expect(page.locator(".stack")).to_have_attribute("aria-label", re.compile(r"^unlabeled \d+, "))
            expect(page.locator("section", has_text="Current labels per class").locator("tbody tr")).to_have_count(10)
            expect(page.locator("section", has_text="Labels per annotator")).to_contain_text("sloppy")
            page.set_viewport_size({"width": 800, "height": 900})
            page.screenshot(path=SCREENSHOTS / "overview-800.png", full_page=True)
            assert page.evaluate("document.documentElement.scrollWidth") <= 800
            page.set_viewport_size({"width": 1280, "height": 900})

            # Models: the table, the curve, the confusion matrix; retrain from here, compare, promote, roll back.
            open_page(page, base, f"/projects/{pid}/models", SCREENSHOTS, "models")
            expect(page.locator(f'circle[data-model="{trained.champion_id}"]')).to_have_count(1)
            expect(page.locator("table.heat tbody tr")).to_have_count(10)
            with page.expect_download() as download:
                page.locator(f'tr[data-model="{trained.champion_id}"] button', has_text="onnx").click()
            onnx = Path(download.value.path()).read_bytes()
            assert download.value.suggested_filename.endswith(".onnx") and len(onnx) > 1000
            done(page, "Downloaded")
            page.locator("summary", has_text="Retrain from here").click()
            page.locator('#retrain-form input[name="epochs"]').fill("2")
            with page.expect_response(lambda r: r.url.endswith("/jobs") and r.request.method == "POST") as started:
                page.locator("#retrain-form button").click()
            done(page, "started with version")
            retrain_job = started.value.json()["id"]
            assert run(trained.app, retrain_job) == JobStatus.succeeded
            with db.session() as session:
                job = session.get(Job, retrain_job)
                assert job.kind == JobKind.train and job.params["force"] is True
                second = session.scalar(select(ModelVersion).where(ModelVersion.job_id == retrain_job))
                assert second.hyperparameters["epochs"] == 2
            second_id = second.id
            page.reload()
            expect(page.locator("#view")).to_have_attribute("aria-busy", "false")
            expect(page.locator("tr[data-model]")).to_have_count(2)
            page.locator("#compare-form button").click()
            expect(page.locator("#comparison table tbody tr")).to_have_count(10)
            expect(page.locator("#comparison h3")).to_contain_text("Test images where they differ")
            page.screenshot(path=SCREENSHOTS / "models-compare.png", full_page=True)
            if second.status != ModelStatus.champion:  # promote the new one by hand first
                page.goto(f"{base}/projects/{pid}/models?model={second_id}")
                page.locator('#promote-form input[name="reason"]').fill("try the short training")
                page.locator("#promote-form button").click()
                done(page, f"Model {second_id} is the champion now")
            page.goto(f"{base}/projects/{pid}/models?model={second_id}")
            wrong = second.metrics["wrong_test_images"]
            expect(page.locator("#errors .tile")).to_have_count(len(wrong))
            if wrong:  # a cell of the confusion matrix shows its images
                given, predicted = wrong[0]["label"], wrong[0]["predicted"]
                page.locator(f'table.heat td[data-given="{given}"][data-predicted="{predicted}"]').click()
                cell = [w for w in wrong if (w["label"], w["predicted"]) == (given, predicted)]
                expect(page.locator("#errors .tile")).to_have_count(len(cell))
                page.screenshot(path=SCREENSHOTS / "models-errors.png", full_page=True)
            page.goto(f"{base}/projects/{pid}/models?model={trained.champion_id}")
            expect(page.locator("#promote-form button")).to_have_text(f"Roll back to #{trained.champion_id}")
            page.locator('#promote-form input[name="reason"]').fill("the first one was better")
            page.locator("#promote-form button").click()
            done(page, f"Model {trained.champion_id} is the champion now")
            expect(page.locator("svg.chart text.note", has_text="rollback")).to_have_count(1)
            page.screenshot(path=SCREENSHOTS / "models-rollback.png", full_page=True)
            with db.session() as session:
                first = session.get(ModelVersion, trained.champion_id)
                assert first.status == ModelStatus.champion
                assert first.decision["promotions"][-1]["reason"] == "the first one was better"
                assert first.decision["promotions"][-1]["replaced"] == second_id

            # Quality: agreement, scorecards, exclude, resolve a weak image, send label issues to review.
            open_page(page, base, f"/projects/{pid}/quality", SCREENSHOTS, "quality")
            expect(page.locator('tr[data-figure="percent_agreement"]')).to_contain_text("%")
            with db.session() as session:  # a small project's report is computed when asked, over every label
                labels = session.scalar(select(func.count()).where(Annotation.project_id == pid, Annotation.is_current))
            expect(page.locator("#report-freshness")).to_contain_text(f"over {labels} labels. Up to date.")
            sloppy = people["sloppy"]
            card = page.locator(f'tr[data-annotator="{sloppy.id}"]')
            card.locator('input[name="reason"]').fill("careless")
            card.get_by_role("button", name="Exclude").click()
            done(page, "sloppy's labels are left out of consensus")
            expect(page.locator(f'tr[data-annotator="{sloppy.id}"]')).to_contain_text("(excluded)")
            with db.session() as session:
                exclusion = session.scalar(
                    select(AnnotatorExclusion).where(AnnotatorExclusion.annotator_id == sloppy.id)
                )
                assert exclusion.reason == "careless" and exclusion.revoked_at is None
            page.locator(f'tr[data-annotator="{sloppy.id}"]').get_by_role("button", name="Include").click()
            done(page, "sloppy's labels count again")
            weak = page.locator("section", has_text="Weak consensus").locator(".tile").first
            weak_image = int(weak.get_attribute("data-image"))
            weak.locator("select").select_option(trained.truth[weak_image])
            weak.get_by_role("button", name="Resolve").click()
            done(page, f"Image {weak_image} is gold")
            issues = page.locator("section", has_text="Label issues").locator(".tile")
            chosen = [int(issues.nth(i).get_attribute("data-image")) for i in range(min(2, issues.count()))]
            for i in range(len(chosen)):
                issues.nth(i).locator("input[type=checkbox]").check()
            page.get_by_role("button", name="Send selected to review").click()
            done(page, "sent to review")
            with db.session() as session:
                assert session.get(Image, weak_image).gold_label == trained.truth[weak_image]
                sent = session.scalars(select(LabelIssue).where(LabelIssue.image_id.in_(chosen))).all()
                assert chosen and all(issue.sent_for_review_at is not None for issue in sent)

            # Mining and jobs: the queue's next images, a schedule, a mining pass started and cancelled.
            open_page(page, base, f"/projects/{pid}/mining", SCREENSHOTS, "mining")
            expect(page.locator("section", has_text="serves next").locator(".tile").first).to_contain_text("review")
            page.locator('#schedule-form input[name="mine"]').fill("0 * * * *")
            page.locator("#schedule-form button").click()
            done(page, "Schedules saved")
            expect(page.locator("#schedule-form")).to_contain_text("mine (next ")
            page.get_by_role("button", name="Start a mining pass").click()
            done(page, "Mining job")
            with db.session() as session:
                schedule = session.scalar(select(Schedule).where(Schedule.project_id == pid))
                assert schedule.kind == JobKind.mine and schedule.cron == "0 * * * *"
                mine = session.scalar(select(Job).where(Job.kind == JobKind.mine).order_by(Job.id.desc()))
                assert mine.status == JobStatus.queued and mine.params["trigger"] == "manual"
            page.locator(f'tr[data-job="{mine.id}"]').get_by_role("button", name="Cancel").click()
            done(page, f"Job {mine.id} cancelled")
            expect(page.locator(f'tr[data-job="{mine.id}"]')).to_contain_text("cancelled")

            # People and settings: a new annotator added in one step, a token rotated, a setting refused then saved.
            open_page(page, base, f"/projects/{pid}/people", SCREENSHOTS, "people")
            page.locator('#add-person input[name="name"]').fill("newbie")
            page.locator("#add-person button").click()
            expect(page.locator("#token-shown .token")).to_be_visible()
            first_token = page.locator("#token-shown .token").text_content()
            with db.session() as session:
                newbie = session.scalar(select(User).where(User.name == "newbie"))
                assert newbie.role == Role.annotator
            member = page.locator(f'tr[data-user="{newbie.id}"]')
            expect(member).to_contain_text("annotator")
            member.get_by_role("button", name="Rotate token").click()
            expect(page.locator("#token-shown .token")).not_to_have_text(first_token)
            rotated = page.locator("#token-shown .token").text_content()
            me = trained.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {rotated}"})
            assert me.json()["name"] == "newbie"
            assert (
                trained.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {first_token}"}).status_code
                == 401
            )
            tasks = trained.client.get(
                f"/api/v1/projects/{pid}/tasks/next", headers={"Authorization": f"Bearer {rotated}"}
            )
            assert tasks.status_code == 200  # a member of the project
            page.locator("#setting-overlap_rate").fill("2")
            page.locator("#settings-form button[type=submit]").click()
            expect(page.locator('.field-error[data-for="overlap_rate"]')).to_contain_text("less than or equal to 1")
            page.screenshot(path=SCREENSHOTS / "settings-error.png", full_page=True)
            page.locator("#setting-overlap_rate").fill("0.25")
            page.locator("#setting-training-epochs").fill("7")
            page.locator("#settings-form button[type=submit]").click()
            done(page, "Settings saved")
            settings = trained.client.get(f"/api/v1/projects/{pid}", headers=trained.admin.headers).json()["settings"]
            assert settings["overlap_rate"] == 0.25 and settings["training"]["epochs"] == 7
            assert settings["training"]["input_size"] == 16  # unchanged fields are not sent
            assert settings["training"]["augmentation"]["hflip"] is None  # "default" stays null

            # A detection project: boxes drawn on the weak images' thumbnails, box agreement figures.
            detection, boxed = detection_project(trained)
            open_page(page, base, f"/projects/{detection}/quality", SCREENSHOTS, "quality-detection")
            expect(page.locator('tr[data-figure="recall"]')).to_contain_text("0.500")
            expect(page.locator('tr[data-figure="precision"]')).to_contain_text("1.000")
            tiles = page.locator("section", has_text="Weak consensus").locator(".tile")
            expect(tiles).to_have_count(len(boxed))
            expect(tiles.first.locator("svg rect")).to_have_count(1)  # the consensus keeps the car
            expect(page.locator("tr[data-annotator]")).to_have_count(2)
            tiles.first.get_by_role("button", name="These boxes are right").click()
            done(page, "boxes are gold now")
            with db.session() as session:
                assert [b["label"] for b in session.get(Image, boxed[0]).gold_boxes] == ["car"]

            # Monitoring: the rolled-back version as a shadow, live predictions and a drift check, then promoted
            # from the page.
            engineer = trained.engineer.headers
            shadow = trained.client.put(
                f"/api/v1/models/{second_id}/deployment", json={"mode": "shadow"}, headers=engineer
            )
            assert shadow.status_code == 200, shadow.text
            pngs, _ = digits()
            live_files = [("files", (f"live-{i}.png", pngs[i])) for i in range(400, 430)]
            sent = trained.client.post(f"/api/v1/projects/{pid}/predict", files=live_files, headers=engineer)
            assert sent.status_code == 200, sent.text
            for kind in ("embed", "drift"):
                job = trained.client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": kind}, headers=engineer).json()
                assert run(trained.app, job["id"]) == JobStatus.succeeded
            open_page(page, base, f"/projects/{pid}/monitoring", SCREENSHOTS, "monitoring")
            expect(page.locator("tr[data-status]")).to_have_count(1)
            row = page.locator(f'tr[data-model="{second_id}"]')
            expect(row).to_contain_text("shadow")
            expect(row.locator("td").nth(3)).to_have_text("30")  # inputs both answered
            page.locator("#check-drift").click()
            done(page, "Drift check")
            row.get_by_role("button", name="Promote").click()
            done(page, f"Model #{second_id} is the champion")
            with db.session() as session:
                promoted = session.get(ModelVersion, second_id)
                assert promoted.status == ModelStatus.champion and promoted.deployment is None

            walk_detector_models(browser, detector, problems)
        finally:
            browser.close()
    assert problems == []
    assert people
