"""The name policy (storage/names.py) through the HTTP API, one corpus of bad names on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import unicodedata

import pytest

from storage.errors import InvalidInput
from storage.models import Role
from storage.names import HIDDEN_RANGES, SPACE_RANGES, display_name
from tests import imagefactory as img
from tests.factories import make_project, make_user

COMPOSED, DECOMPOSED = "\u00e1", "a\u0301"  # á
BAD_NAMES = {
    "nul": "ca\x00t",
    "escape": "ca\x1b[31mt",
    "newline": "ca\nt",
    "right-to-left override": "cat\u202egnp.exe",
    "right-to-left isolate": "\u2067cat",
    "zero-width space alone": "\u200b",
    "zero-width joiner inside": "c\u200dat",
    "byte order mark": "\ufeffcat",
    "soft hyphen": "ca\u00adt",
    "line separator": "cat\u2028dog",
    "hangul filler alone": "\u3164",
    "only spaces": "\u3000 ",
    "tag characters": "cat\U000e0041\U000e007f",
}


def post(client, account, path, body):
    """JSON written with escapes (``\\u0000``, ``\\ud800``), as a client in any language may send them."""
    headers = {**account.headers, "Content-Type": "application/json"}
    return client.post(f"/api/v1{path}", content=json.dumps(body), headers=headers)


@pytest.mark.postgres  # PostgreSQL cannot store NUL: the answer must not depend on the database
def test_every_bad_name_is_refused_for_projects_labels_and_users_alike(client, admin):
    answers = {}
    for kind, bad in BAD_NAMES.items():
        project = post(client, admin, "/projects", {"name": bad, "labels": ["cat", "dog"]})
        labels = post(client, admin, "/projects", {"name": "p", "labels": ["dog", bad]})
        user = post(client, admin, "/users", {"name": f"ann{bad}", "role": "annotator"})
        answers[kind] = [(r.status_code, r.json()["error"]["code"]) for r in (project, labels, user)]
    expected = [(422, "invalid_project_name"), (422, "invalid_labels"), (422, "invalid_user_name")]
    assert answers == dict.fromkeys(BAD_NAMES, expected)
    message = post(client, admin, "/projects", {"name": "cat\u202egnp.exe", "labels": ["a", "b"]}).json()["error"]
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE) at position 4" in message["message"] and "remove it" in message["message"]
    # JSON may escape half of a UTF-16 pair; no database can store it, and the request schema refuses it.
    for path, body in (("/projects", {"name": "cat\ud800", "labels": ["a", "b"]}), ("/users", {"name": "\udc00"})):
        response = post(client, admin, path, {**body, "role": "annotator"} if path == "/users" else body)
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request", response.text
    assert client.get("/api/v1/projects", headers=admin.headers).json() == []
    assert [u["name"] for u in client.get("/api/v1/users", headers=admin.headers).json()] == ["root"]


def test_names_are_stored_in_nfc_so_composed_and_decomposed_are_one_name(client, admin, annotator):
    same = client.post("/api/v1/projects", json={"name": "p", "labels": [COMPOSED, DECOMPOSED]}, headers=admin.headers)
    assert same.status_code == 422 and f"repeated: {COMPOSED}" in same.json()["error"]["message"]

    project = make_project(client, admin, annotator, name=f"caf{DECOMPOSED}", labels=[f"{DECOMPOSED}rbol", "b"])
    assert project["name"] == f"caf{COMPOSED}" and project["labels"] == [f"{COMPOSED}rbol", "b"]
    again = client.post(
        "/api/v1/projects", json={"name": f"caf{COMPOSED}", "labels": ["a", "b"]}, headers=admin.headers
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "project_exists"

    uploaded = client.post(
        f"/api/v1/projects/{project['id']}/images", files=[("files", ("x.png", img.png()))], headers=admin.headers
    )
    assert uploaded.status_code == 201, uploaded.text
    task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers).json()
    submitted = client.post(
        f"/api/v1/projects/{project['id']}/annotations",
        json={"image_id": task["image_id"], "label": f"{DECOMPOSED}rbol"},  # typed decomposed: the same label
        headers=annotator.headers,
    )
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["label"] == f"{COMPOSED}rbol"


@pytest.mark.postgres  # lower() in the unique index
def test_user_names_are_unique_ignoring_case(app, client, admin):
    created = client.post("/api/v1/users", json={"name": "Eve", "role": "annotator"}, headers=admin.headers)
    assert created.status_code == 201
    for name in ("ROOT", "Root", "eve", "EVE"):
        clash = client.post("/api/v1/users", json={"name": name, "role": "annotator"}, headers=admin.headers)
        assert clash.status_code == 409, clash.text
        error = clash.json()["error"]
        assert error["code"] == "user_exists" and "ignoring case" in error["message"]
    names = [u["name"] for u in client.get("/api/v1/users", headers=admin.headers).json()]
    assert names == ["root", "Eve"]
    with pytest.raises(InvalidInput, match="U\\+000A"):  # `labelwheel users create` goes through the same policy
        make_user(app, "bob\n", Role.annotator)


def test_file_names_are_shown_in_nfc_with_hidden_characters_replaced(client, admin):
    """An image is not refused for its file name: the name it is shown under is made harmless instead."""
    project = make_project(client, admin)
    # Multipart clients escape control characters in a file name; a zip entry's name carries them as they are.
    archive = img.zip_of({f"caf{DECOMPOSED}\x1b.png": img.png(color=(4, 5, 6))})
    sent = {"photo\u202egnp.exe": img.png(color=(1, 2, 3)), "in.zip": archive}
    uploaded = client.post(
        f"/api/v1/projects/{project['id']}/images",
        files=[("files", (name, data)) for name, data in sent.items()],
        headers=admin.headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    page = client.get(f"/api/v1/projects/{project['id']}/images", headers=admin.headers).json()
    shown = sorted(image["original_name"] for image in page["items"])
    assert shown == [f"in.zip/caf{COMPOSED}\ufffd.png", "photo\ufffdgnp.exe"]
    assert all(unicodedata.is_normalized("NFC", name) for name in shown)


def test_display_names_keep_ordinary_text_and_emoji():
    assert (
        display_name("猫 · Katze 🐈‍⬛.png", max_length=1024) == "猫 · Katze 🐈\ufffd⬛.png"
    )  # ZWJ is a format character
    assert display_name("été.jpg", max_length=5) == "été.j"


def test_the_hidden_and_space_ranges_are_exactly_unicodes_categories():
    """The ranges stand in for unicodedata's categories in the API patterns; a newer Unicode must update them."""
    fillers = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0}  # default-ignorable letters and marks
    hidden_categories = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    hidden, space = set(), set()
    for point in range(0x110000):
        char = chr(point)
        if point in fillers or unicodedata.category(char) in hidden_categories:
            hidden.add(point)
        if char.isspace():
            space.add(point)
    assert {p for low, high in HIDDEN_RANGES for p in range(low, high + 1)} == hidden
    assert {p for low, high in SPACE_RANGES for p in range(low, high + 1)} == space
