"""The labeling page: served outside the API schema, and driven end to end in headless Chromium on a real server."""

from __future__ import annotations

import io
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from storage.db import Database
from storage.models import Prediction
from tests.conftest import unavailable
from tests.test_cli import serving

CHROMIUM = Path("/usr/bin/chromium")
# The machines running the tests have no internet: keep Chromium from calling home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The suite runs one test process per core beside the server and Chromium: a slow moment is not a failure.
expect.set_options(timeout=20_000)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_the_page_and_its_assets_are_served_outside_the_api_schema(client, app):
    page = client.get("/label/1")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/label.js"' in page.text
    for bad in ("0", str(2**31), "abc"):
        assert client.get(f"/label/{bad}").status_code == 422
    assert client.get("/static/label.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/label.css").headers["content-type"].startswith("text/css")
    for missing in ("nope.js", "label.html", "%2e%2e%2fapp.py", "..%2fapp.py"):
        assert client.get(f"/static/{missing}").status_code == 404
    # The client resolves /static/.. to / before sending it: the console's page, not a file from above static/.
    assert client.get("/static/..").text == client.get("/").text
    paths = app.openapi()["paths"]
    assert not any(path.startswith(("/label/{", "/static", "/docs")) for path in paths)  # /labelstudio/ is API


def test_the_api_docs_are_served_from_the_package_under_the_pages_policy(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    policy = docs.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
    assert not re.search(r"(https?:)?//", docs.text)  # nothing from a CDN
    assert '<script src="/static/docs.js"' in docs.text
    for name, kind in (
        ("swagger-ui/swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui/swagger-ui.css", "text/css"),
        ("swagger-ui/favicon-32x32.png", "image/png"),
        ("docs.js", "text/javascript"),
    ):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
    assert client.get("/static/swagger-ui/LICENSE").status_code == 404
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN


def test_every_operation_and_parameter_has_a_description(app):
    missing = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if not operation.get("description", "").strip():
                missing.append(f"{method.upper()} {path}")
            missing += [
                f"{method.upper()} {path} parameter {p['name']}"
                for p in operation.get("parameters", [])
                if not p.get("description", "").strip()
            ]
    assert missing == []


@dataclass(frozen=True)
class Server:
    base: str
    admin_token: str
    data_dir: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """One server for the page tests of this module (it takes seconds to start); each test makes its own projects
    and users."""
    if not CHROMIUM.exists():
        unavailable("chromium", f"{CHROMIUM} is missing; install Debian's chromium package")
    tmp_path = tmp_path_factory.mktemp("server")
    data_dir = tmp_path / "data"
    admin_token = secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELWHEEL_")}
    env |= {"LABELWHEEL_DATA_DIR": str(data_dir), "LABELWHEEL_ADMIN_TOKEN": admin_token}
    with serving(env, tmp_path / "serve.log") as (base, _):
        yield Server(base, admin_token, data_dir)


def picture(i: int) -> bytes:
    """A small distinct PNG: a coloured disc on a plain background."""
    image = Image.new("RGB", (40, 30), (230 - 30 * i, 220, 200 + 10 * i))
    ImageDraw.Draw(image).ellipse((8 + i, 5, 30 + i, 25), fill=(40 * i, 90, 160 - 20 * i))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def seed(server: Server, admin: httpx.Client) -> tuple[int, str, list[int], int]:
    """A project with three labels and five images, and an annotator who is a member of it and of a digits
    project: (project, token, images, digits project)."""
    body = {"name": "pets", "labels": ["cat", "dog", "bird"], "settings": {"gold_rate": 0, "overlap_rate": 0}}
    created = admin.post("/api/v1/projects", json=body)
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    user = admin.post("/api/v1/users", json={"name": "annie", "role": "annotator"})
    assert user.status_code == 201, user.text
    member = admin.post(f"/api/v1/projects/{project_id}/members", json={"user_id": user.json()["id"]})
    assert member.status_code == 201, member.text
    files = [("files", (f"{i}.png", picture(i))) for i in range(5)]
    uploaded = admin.post(f"/api/v1/projects/{project_id}/images", files=files)
    assert uploaded.status_code == 201, uploaded.text
    image_ids = [f["image_id"] for f in uploaded.json()["files"]]
    assert len(set(image_ids)) == 5
    digits = {
        "name": "digits",
        "labels": [*"0123456789", "other"],
        "settings": {"gold_rate": 0, "overlap_rate": 0, "hotkeys": {"other": "x"}},
    }
    digits_id = admin.post("/api/v1/projects", json=digits).json()["id"]
    added = admin.post(f"/api/v1/projects/{digits_id}/members", json={"user_id": user.json()["id"]})
    assert added.status_code == 201, added.text
    assert admin.post(f"/api/v1/projects/{digits_id}/images", files=files[:1]).status_code == 201
    return project_id, user.json()["token"], image_ids, digits_id


def add_prelabel(server: Server, image_id: int) -> None:
    db = Database(f"sqlite:///{server.data_dir / 'labelwheel.db'}")
    with db.session() as session:
        session.add(Prediction(image_id=image_id, model_version="v-test", label="dog", confidence=0.87))
    db.dispose()


def note_console_error(message: ConsoleMessage, problems: list[str]) -> None:
    # A 401 or 404 answer is logged as "Failed to load resource"; the page handles those itself.
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        problems.append(message.text)


def shown_image(page: Page) -> int:
    expect(page.locator("#workspace")).to_have_attribute("aria-busy", "false")
    return int(page.locator("#image").get_attribute("data-image-id"))


def press(page: Page, key: str, *, posts_to: str, status: int) -> httpx.Headers:
    """Press a shortcut, wait for its POST and for the page to settle; the request's headers come back. When no
    POST comes, the failure says what the page was doing (busy, its message, the focused element)."""
    try:
        with page.expect_response(
            lambda r: r.request.method == "POST" and urlsplit(r.url).path.endswith(posts_to)
        ) as answer:
            page.keyboard.press(key)
    except PlaywrightTimeoutError as error:
        seen = page.evaluate(
            """() => ({busy: document.getElementById("workspace").getAttribute("aria-busy"),
                      message: document.getElementById("message").textContent,
                      focused: document.activeElement?.outerHTML.slice(0, 120)})"""
        )
        raise AssertionError(f"pressing {key} sent no POST to {posts_to}; the page then: {seen}") from error
    assert answer.value.status == status, answer.value.text()
    expect(page.locator("#workspace")).to_have_attribute("aria-busy", "false")
    return httpx.Headers(answer.value.request.headers)


@pytest.mark.slow
def test_an_annotator_labels_skips_and_corrects_with_the_keyboard(server, tmp_path):
    """Also, in the same browser: a digits project's keys are its digits, and /docs renders with no network but
    the server's."""
    admin = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30)
    project_id, token, image_ids, digits_id = seed(server, admin)
    prelabeled = image_ids[2]
    add_prelabel(server, prelabeled)
    screenshot = tmp_path / "label-page.png"
    problems: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("console", lambda message: note_console_error(message, problems))
            page.goto(f"{server.base}/label/{project_id}")

            page.get_by_label("API token").fill("not-a-real-token")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#sign-in-error")).to_contain_text("invalid API token")
            page.get_by_label("API token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            progress = page.locator("#progress")
            expect(progress).to_have_text("You labeled 0 · done 0 of 5")
            expect(page.locator("#project-name")).to_have_text("pets")
            for name, key in (("cat", "1"), ("dog", "2"), ("bird", "3")):
                button = page.get_by_role("button", name=re.compile(rf"^{key} {name}"))
                expect(button).to_have_attribute("aria-keyshortcuts", key)

            def check_prelabel(image_id: int) -> None:
                suggested = page.locator("button.label.suggested")
                if image_id == prelabeled:
                    expect(page.locator("#suggestion")).to_have_text("Model suggests dog (87%)")
                    expect(suggested).to_have_count(1)
                    expect(suggested).to_contain_text("dog")
                    if not screenshot.exists():
                        page.screenshot(path=screenshot)
                else:
                    expect(page.locator("#suggestion")).to_be_hidden()
                    expect(suggested).to_have_count(0)

            given: dict[int, str] = {}
            for n, (key, label) in enumerate((("1", "cat"), ("2", "dog"), ("3", "bird")), start=1):
                image_id = shown_image(page)
                check_prelabel(image_id)
                headers = press(page, key, posts_to="/annotations", status=201)
                assert UUID.match(headers["idempotency-key"])
                given[image_id] = label
                expect(progress).to_have_text(f"You labeled {n} · done {n} of 5")
            image = page.locator("#image")
            assert "pixelated" in image.get_attribute("class")
            assert image.bounding_box()["height"] > 500  # a 40×30 picture fills the stage

            skipped = shown_image(page)
            check_prelabel(skipped)
            press(page, "s", posts_to=f"/tasks/{skipped}/skip", status=204)
            held = shown_image(page)
            check_prelabel(held)
            assert len({*given, skipped, held}) == 5

            corrected = image_id  # the last one labeled, as "bird"
            page.keyboard.press("u")
            expect(image).to_have_attribute("data-image-id", str(corrected))
            expect(page.locator("#workspace")).to_have_attribute("aria-busy", "false")
            expect(page.locator("#undo-banner")).to_contain_text("you chose “bird”")
            expect(page.locator("button.label.previous")).to_contain_text("bird")
            press(page, "1", posts_to="/annotations", status=201)
            given[corrected] = "cat"
            expect(image).to_have_attribute("data-image-id", str(held))
            expect(page.locator("#undo-banner")).to_be_hidden()
            expect(progress).to_have_text("You labeled 3 · done 3 of 5")

            dropped: list[str] = []

            def drop(route: Route) -> None:
                dropped.append(route.request.headers["idempotency-key"])
                route.abort()

            page.route("**/annotations?next=true", drop, times=1)
            page.keyboard.press("2")
            expect(page.locator("#message")).to_contain_text("Could not reach the server")
            expect(page.locator("#workspace")).to_have_attribute("aria-busy", "false")
            headers = press(page, "2", posts_to="/annotations", status=201)
            assert headers["idempotency-key"] == dropped[0]  # the retry of a lost request reuses its key
            given[held] = "dog"
            expect(progress).to_have_text("You labeled 4 · done 4 of 5")
            expect(page.locator("#done-title")).to_have_text("Nothing left for you to label; 1 of 5 images still wait")
            expect(page.locator("#waiting-reasons li")).to_have_text(
                "1 image needs an annotator: the project's only annotator member skipped it; "
                "add an annotator to the project to finish it"
            )

            page.goto(f"{server.base}/label/{digits_id}")  # signed in already: the token is kept
            for name, key in (("0", "0"), ("7", "7"), ("other", "x")):
                button = page.get_by_role("button", name=f"{key} {name}", exact=True)
                expect(button).to_have_attribute("aria-keyshortcuts", key)
            shown_image(page)
            with page.expect_response(
                lambda r: r.request.method == "POST" and r.url.endswith("/annotations?next=true")
            ) as sent:
                page.keyboard.press("7")  # one round trip: the answer brings the next task, here none
            assert sent.value.status == 201 and sent.value.json()["annotation"]["label"] == "7"
            assert sent.value.json()["next_task"] is None
            expect(page.locator("#done-title")).to_have_text("All done — nothing left to label")

            docs = browser.new_page(viewport={"width": 1280, "height": 800})
            docs.set_default_timeout(20_000)
            docs.on("pageerror", lambda error: problems.append(str(error)))
            docs.on("console", lambda message: note_console_error(message, problems))
            elsewhere: list[str] = []

            def only_the_server(route: Route) -> None:
                if route.request.url.startswith(server.base):
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            docs.route("**/*", only_the_server)
            docs.goto(f"{server.base}/docs")
            operations = sum(len(ops) for ops in admin.get("/openapi.json").json()["paths"].values())
            expect(docs.locator(".opblock")).to_have_count(operations)
            expect(
                docs.locator(".opblock-summary-path", has_text="/api/v1/projects/{project_id}/progress")
            ).to_be_visible()
            assert elsewhere == []
        finally:
            browser.close()

    assert problems == []
    assert screenshot.exists()
    print(f"\nscreenshot of the labeling page: {screenshot}")  # noqa: T201

    url = f"/api/v1/projects/{project_id}/annotations"
    current = admin.get(url, params={"current_only": "true"}).json()["items"]
    assert {a["image_id"]: a["label"] for a in current} == given
    assert all(a["duration_ms"] is not None and a["origin"] == "human" for a in current)
    history = admin.get(url).json()["items"]
    replaced = [a for a in history if not a["is_current"]]
    assert [(a["image_id"], a["label"]) for a in replaced] == [(corrected, "bird")]
    correction = next(a for a in current if a["image_id"] == corrected)
    assert correction["supersedes_id"] == replaced[0]["id"]
    assert skipped not in {a["image_id"] for a in history}
    admin.close()


WIDTH, HEIGHT = 640, 480  # larger than the stage's 1:1 room in neither direction: shown at about 135%, zoomable


def scene(i: int) -> bytes:
    """A distinct 640×480 PNG."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (60 + 40 * i, 90, 120))
    ImageDraw.Draw(image).rectangle((100 + 20 * i, 80, 300, 200), fill=(220, 200, 40))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def new_page(browser: Browser, problems: list[str]) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: note_console_error(message, problems))
    return page


def on_screen(page: Page, x: float, y: float) -> tuple[int, int]:
    """The whole screen pixel nearest to image pixel (x, y), as the image is rendered now."""
    frame = page.locator("#image").bounding_box()
    scale = frame["width"] / WIDTH
    assert frame["height"] / scale == pytest.approx(HEIGHT, abs=0.05)  # undistorted (layout rounds to 1/64 px)
    return round(frame["x"] + x * scale), round(frame["y"] + y * scale)


def in_image(page: Page, point: tuple[int, int]) -> tuple[float, float]:
    frame = page.locator("#image").bounding_box()
    scale = frame["width"] / WIDTH
    return (point[0] - frame["x"]) / scale, (point[1] - frame["y"]) / scale


def drag(page: Page, start: tuple[int, int], end: tuple[int, int]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=4)
    page.mouse.up()


def draw(page: Page, start: tuple[float, float], end: tuple[float, float], label: str) -> dict:
    """Drag from image pixel `start` to `end`; the box the screen pixels dragged over mean, in image pixels."""
    corners = on_screen(page, *start), on_screen(page, *end)
    drag(page, *corners)
    (x0, y0), (x1, y1) = (in_image(page, corner) for corner in corners)
    return {"label": label, "x": min(x0, x1), "y": min(y0, y1), "w": abs(x1 - x0), "h": abs(y1 - y0)}


def assert_boxes(stored: list[dict], drawn: list[dict]) -> None:
    assert [b["label"] for b in stored] == [b["label"] for b in drawn]
    for s, d in zip(stored, drawn, strict=True):
        assert all(abs(s[k] - d[k]) <= 1 for k in "xywh"), (stored, drawn)


@pytest.mark.slow
def test_an_annotator_draws_edits_and_submits_boxes_at_two_zoom_levels(server):
    """A detection project: boxes drawn, resized and deleted with the mouse are stored in image pixels (±1 px) at
    the fitted size and zoomed in and panned; detector suggestions are accepted all at once; "No objects" stores []."""
    admin = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30)
    settings = {"gold_rate": 0, "overlap_rate": 0}
    body = {"name": "streets", "task_type": "detection", "labels": ["car", "person", "sign"], "settings": settings}
    project_id = admin.post("/api/v1/projects", json=body).json()["id"]
    user = admin.post("/api/v1/users", json={"name": "boxer", "role": "annotator"}).json()
    assert admin.post(f"/api/v1/projects/{project_id}/members", json={"user_id": user["id"]}).status_code == 201
    files = [("files", (f"{i}.png", scene(i))) for i in range(4)]
    assert admin.post(f"/api/v1/projects/{project_id}/images", files=files).status_code == 201
    suggested = [
        {"label": "person", "x": 10.0, "y": 20.0, "w": 50.0, "h": 120.0, "score": 0.9},
        {"label": "sign", "x": 400.5, "y": 30.25, "w": 20.0, "h": 20.0, "score": 0.61},
    ]
    drawn: dict[int, list[dict]] = {}
    problems: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = new_page(browser, problems)
            page.goto(f"{server.base}/label/{project_id}")
            page.get_by_label("API token").fill(user["token"])
            page.get_by_role("button", name="Sign in").click()
            boxes = page.locator("#box-list li")
            caption = page.locator("#caption")

            # At the fitted size: three boxes (the class picked by its key after drawing), one resized by its
            # bottom-right handle, one deleted.
            first = shown_image(page)
            expect(caption).to_have_text(re.compile(rf"^Image #{first} · {WIDTH}×{HEIGHT} px · zoom \d+%$"))
            draw(page, (60, 50), (200, 150), "car")  # the first label until a key picks another
            person = draw(page, (420, 300), (300, 100), "person")  # dragged up and left
            page.keyboard.press("2")
            sign = draw(page, (450, 320), (600, 440), "person")
            page.keyboard.press("3")
            sign["label"] = "sign"
            expect(boxes).to_have_text(["car", "person", "sign"])
            corner = on_screen(page, sign["x"] + sign["w"], sign["y"] + sign["h"])
            expect(page.locator("#overlay .handle")).to_have_count(8)
            expect(page.locator("#overlay .handle").first).to_be_visible()
            moved = (corner[0] + 20, corner[1] + 25)
            drag(page, corner, moved)
            right, bottom = in_image(page, moved)
            sign |= {"w": right - sign["x"], "h": bottom - sign["y"]}
            page.mouse.click(*on_screen(page, 130, 100))  # selects the car box
            expect(page.locator("#box-list button.selected")).to_have_text("car")
            page.keyboard.press("Delete")
            expect(boxes).to_have_text(["person", "sign"])
            drawn[first] = [person, sign]
            press(page, "Enter", posts_to="/annotations", status=201)

            # Zoomed in around the pointer, then panned with Space held: a box drawn, one drawn and undone.
            second = shown_image(page)
            page.mouse.move(*on_screen(page, 320, 240))
            fitted = page.locator("#image").bounding_box()
            at_fit = caption.text_content()
            page.mouse.wheel(0, -300)
            expect(caption).not_to_have_text(at_fit)
            zoomed = page.locator("#image").bounding_box()
            assert zoomed["width"] > 1.9 * fitted["width"]
            near = draw(page, (250, 180), (330, 260), "car")
            page.keyboard.press("1")  # the class chosen last, "sign", stays until a key picks another
            grab = on_screen(page, 320, 240)
            page.keyboard.down("Space")
            drag(page, grab, (grab[0] - 100, grab[1] - 50))
            page.keyboard.up("Space")
            panned = page.locator("#image").bounding_box()
            assert (panned["x"] - zoomed["x"], panned["y"] - zoomed["y"]) == (pytest.approx(-100), pytest.approx(-50))
            far = draw(page, (380, 300), (420, 340), "car")
            draw(page, (340, 200), (360, 230), "car")
            expect(boxes).to_have_count(3)
            page.keyboard.press("Control+z")
            expect(boxes).to_have_count(2)
            drawn[second] = [near, far]

            def suggest(route: Route) -> None:  # no detector yet (issue 14): its answer is added to the next task
                answer = route.fetch()
                prelabel = {"boxes": suggested, "model_version": "detector-1"}
                task = answer.json()["next_task"] | {"prelabel_boxes": prelabel}
                route.fulfill(response=answer, json=answer.json() | {"next_task": task})

            page.route("**/annotations?next=true", suggest, times=1)
            press(page, "Enter", posts_to="/annotations", status=201)

            # A detector's boxes are dashed with their scores, and must be accepted before Enter submits them.
            third = shown_image(page)
            expect(page.locator("#overlay .box.suggested")).to_have_count(2)
            expect(page.locator("#overlay .box.suggested").first).to_be_visible()
            expect(page.locator("#overlay text")).to_have_text(["person 90%", "sign 61%"])
            expect(page.locator("#suggestion")).to_have_text("Model suggests 2 boxes: Ctrl+A accepts all")
            page.keyboard.press("Enter")
            expect(page.locator("#message")).to_contain_text("2 suggested boxes are not accepted yet")
            page.keyboard.press("Control+a")
            expect(page.locator("#overlay .box.suggested")).to_have_count(0)
            drawn[third] = [{k: v for k, v in box.items() if k != "score"} for box in suggested]
            press(page, "Enter", posts_to="/annotations", status=201)

            fourth = shown_image(page)
            with page.expect_response(
                lambda r: r.request.method == "POST" and r.url.endswith("/annotations?next=true")
            ) as sent:
                page.get_by_role("button", name="No objects").click()
            assert sent.value.status == 201 and sent.value.json()["annotation"]["boxes"] == []
            expect(page.locator("#done")).to_be_visible()
            expect(page.locator("#workspace")).to_have_attribute("aria-busy", "false")

            # Undo brings the last image back with its answer, to correct.
            page.keyboard.press("u")
            expect(page.locator("#undo-banner")).to_contain_text(
                f"Correcting image #{fourth}: you submitted no objects"
            )
            drawn[fourth] = [draw(page, (500, 100), (560, 180), "car")]
            press(page, "Enter", posts_to="/annotations", status=201)
            expect(page.locator("#done-title")).to_have_text("All done — nothing left to label")
        finally:
            browser.close()

    assert problems == []
    current = admin.get(f"/api/v1/projects/{project_id}/annotations", params={"current_only": "true"}).json()["items"]
    stored = {a["image_id"]: a["boxes"] for a in current}
    assert stored.keys() == drawn.keys()
    for image_id, boxes in drawn.items():
        assert_boxes(stored[image_id], boxes)
    assert stored[third] == drawn[third]  # suggestions are submitted exactly
    history = admin.get(f"/api/v1/projects/{project_id}/images/{fourth}/annotations").json()
    assert [(a["boxes"], a["is_current"]) for a in history] == [([], False), (stored[fourth], True)]
    admin.close()
