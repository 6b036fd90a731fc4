"""Image ingest and reading, end to end through the HTTP API on a real database and blob store."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile

import pytest
from PIL import Image
from sqlalchemy import func, select

from storage.models import Image as ImageRow
from tests import imagefactory as img
from tests.factories import make_project


def upload(client, project_id, account, *files):
    return client.post(
        f"/api/v1/projects/{project_id}/images",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        headers=account.headers,
    )


def stored_rows(app) -> int:
    with app.state.runtime.db.session() as session:
        return session.scalar(select(func.count()).select_from(ImageRow))


def blob_count(app) -> int:
    root = app.state.runtime.blobs.root
    return sum(1 for p in root.glob("??/*") if p.is_file())


def by_name(body) -> dict:
    return {f["name"]: f for f in body["files"]}


def test_every_accepted_format_is_stored_with_its_facts_and_original_bytes(client, admin):
    project = make_project(client, admin)
    files = {
        "a.png": img.png(),
        "b.jpg": img.encoded("JPEG"),
        "c.webp": img.encoded("WEBP"),
        "d.bmp": img.encoded("BMP"),
        "e.tiff": img.encoded("TIFF"),
        "f.gif": img.gif_two_frames(),
    }
    response = upload(client, project["id"], admin, *files.items())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["accepted"] == 6 and body["rejected"] == 0
    expected_type = {
        "a.png": "image/png",
        "b.jpg": "image/jpeg",
        "c.webp": "image/webp",
        "d.bmp": "image/bmp",
        "e.tiff": "image/tiff",
        "f.gif": "image/gif",
    }
    for name, result in by_name(body).items():
        image = client.get(f"/api/v1/images/{result['image_id']}", headers=admin.headers).json()
        assert image["sha256"] == hashlib.sha256(files[name]).hexdigest()
        assert image["byte_size"] == len(files[name])
        assert image["original_name"] == name
        assert image["split"] in {"train", "test"}
        content = client.get(f"/api/v1/images/{result['image_id']}/content", headers=admin.headers)
        assert content.status_code == 200
        assert content.content == files[name]
        assert content.headers["content-type"] == expected_type[name]
        assert content.headers["etag"] == f'"{image["sha256"]}"'
        assert content.headers["x-content-type-options"] == "nosniff"  # never shown as a type guessed from bytes
    gif = client.get(f"/api/v1/images/{by_name(body)['f.gif']['image_id']}", headers=admin.headers).json()
    assert (gif["width"], gif["height"], gif["format"]) == (20, 10, "GIF")


def test_content_answers_304_for_a_matching_etag(client, admin):
    project = make_project(client, admin)
    image_id = upload(client, project["id"], admin, ("a.png", img.png())).json()["files"][0]["image_id"]
    first = client.get(f"/api/v1/images/{image_id}/content", headers=admin.headers)
    again = client.get(
        f"/api/v1/images/{image_id}/content", headers={**admin.headers, "If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""


def test_exif_orientation_is_stored_and_the_thumbnail_is_upright(client, admin):
    project = make_project(client, admin)
    data = img.jpeg_with_orientation(6, size=(60, 20))  # 6: rotate 90 degrees to display
    result = upload(client, project["id"], admin, ("rot.jpg", data)).json()["files"][0]
    image = client.get(f"/api/v1/images/{result['image_id']}", headers=admin.headers).json()
    assert (image["width"], image["height"], image["exif_orientation"]) == (60, 20, 6)
    thumb = client.get(f"/api/v1/images/{result['image_id']}/thumbnail", headers=admin.headers)
    assert thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (20, 60)
    original = client.get(f"/api/v1/images/{result['image_id']}/content", headers=admin.headers).content
    assert original == data  # the original is never rewritten


def test_large_images_get_a_bounded_thumbnail(client, admin):
    project = make_project(client, admin)
    result = upload(client, project["id"], admin, ("big.png", img.png(1000, 500))).json()["files"][0]
    thumb = client.get(f"/api/v1/images/{result['image_id']}/thumbnail", headers=admin.headers)
    assert Image.open(io.BytesIO(thumb.content)).size == (256, 128)


def test_duplicates_return_the_same_image_id_within_and_across_requests(client, admin, app):
    project = make_project(client, admin)
    first = upload(client, project["id"], admin, ("a.png", img.png()), ("same.png", img.png())).json()
    assert [f["status"] for f in first["files"]] == ["accepted", "duplicate"]
    assert first["files"][0]["image_id"] == first["files"][1]["image_id"]
    again = upload(client, project["id"], admin, ("a-again.png", img.png()))
    assert again.status_code == 200
    assert again.json()["files"][0] == {**first["files"][0], "name": "a-again.png", "status": "duplicate"}
    assert stored_rows(app) == 1


def test_the_same_image_in_two_projects_is_two_images_sharing_one_blob(client, admin, app):
    one, two = make_project(client, admin), make_project(client, admin)
    photo = img.encoded("JPEG")
    a = upload(client, one["id"], admin, ("a.jpg", photo)).json()["files"][0]
    b = upload(client, two["id"], admin, ("a.jpg", photo)).json()["files"][0]
    assert a["status"] == b["status"] == "accepted"
    assert a["image_id"] != b["image_id"]
    assert blob_count(app) == 2  # one original, one thumbnail


BAD_FILES = {
    "corrupt.png": (img.corrupt_png(), "invalid_image", "corrupt"),
    "truncated.jpg": (img.truncated_jpeg(), "invalid_image", "truncated"),
    "huge.png": (img.png_header_only(30000, 30000), "invalid_image", "decompression bomb"),
    "notes.png": (b"this is a text file, not a picture\n" * 20, "invalid_image", "not an image"),
    "empty.png": (b"", "empty_file", "empty"),
    "vector.svg": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "invalid_image", "not an image"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_file_is_refused_with_a_reason_and_the_rest_is_stored(client, admin, app, name):
    project = make_project(client, admin)
    data, code, words = BAD_FILES[name]
    response = upload(client, project["id"], admin, ("good.jpg", img.encoded("JPEG")), (name, data))
    assert response.status_code == 201
    results = by_name(response.json())
    assert results["good.jpg"]["status"] == "accepted"
    assert results[name]["status"] == "rejected"
    assert results[name]["code"] == code
    assert words in results[name]["reason"]
    assert stored_rows(app) == 1
    assert blob_count(app) == 2  # the good image and its thumbnail: nothing for the bad file


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_batch_of_only_bad_files_is_a_422_that_stores_nothing(client, admin, app, name):
    project = make_project(client, admin)
    data, code, _ = BAD_FILES[name]
    response = upload(client, project["id"], admin, (name, data))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "no_images_accepted"
    assert error["details"]["files"][0]["code"] == code
    assert stored_rows(app) == 0 and blob_count(app) == 0


def test_an_image_over_the_pixel_limit_is_refused_by_our_limit(client, admin, app, settings):
    app.state.runtime.settings = settings.model_copy(update={"max_image_pixels": 100 * 100})
    project = make_project(client, admin)
    response = upload(client, project["id"], admin, ("ok.png", img.png(100, 100)), ("big.png", img.png(101, 100)))
    results = by_name(response.json())
    assert results["ok.png"]["status"] == "accepted"
    assert "LABELWHEEL_MAX_IMAGE_PIXELS" in results["big.png"]["reason"]


def test_a_file_over_the_byte_limit_is_refused(client, admin, app, settings):
    app.state.runtime.settings = settings.model_copy(update={"max_file_bytes": 2000})
    project = make_project(client, admin)
    big = img.encoded("BMP", size=(40, 40))  # about 4.8 KB
    response = upload(client, project["id"], admin, ("small.png", img.png(4, 4)), ("big.bmp", big))
    results = by_name(response.json())
    assert results["small.png"]["status"] == "accepted"
    assert results["big.bmp"]["code"] == "file_too_large"


def test_an_unwritable_blob_store_is_a_503_that_stores_nothing(client, admin, app):
    project = make_project(client, admin)
    root = app.state.runtime.blobs.root
    shutil.rmtree(root)
    root.write_bytes(b"")  # a file where the folder should be: no write succeeds, not even as root
    response = upload(client, project["id"], admin, ("a.png", img.png()), ("b.png", img.png(8, 8)))
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable" and "not writable" in error["message"]
    assert str(root) in error["message"] and "LABELWHEEL_BLOB_URL" in error["message"]
    assert stored_rows(app) == 0


def test_a_zip_archive_is_unpacked_and_non_images_are_reported(client, admin, app):
    project = make_project(client, admin)
    archive = img.zip_of(
        {"cats/1.png": img.png(color=(1, 2, 3)), "dogs/2.jpg": img.encoded("JPEG"), "README.txt": b"hello"}
    )
    response = upload(client, project["id"], admin, ("batch.zip", archive), ("loose.png", img.png()))
    assert response.status_code == 201
    results = by_name(response.json())
    assert results["batch.zip/cats/1.png"]["status"] == "accepted"
    assert results["batch.zip/dogs/2.jpg"]["status"] == "accepted"
    assert results["batch.zip/README.txt"]["status"] == "rejected"
    assert results["loose.png"]["status"] == "accepted"
    image = client.get(f"/api/v1/images/{results['batch.zip/cats/1.png']['image_id']}", headers=admin.headers)
    assert image.json()["source"] == "zip"
    assert stored_rows(app) == 3


@pytest.mark.parametrize("evil", ["../evil.png", "a/../../evil.png", "/abs/evil.png", "C:/evil.png", "..\\evil.png"])
def test_zip_entries_that_escape_their_folder_are_refused(client, admin, app, evil):
    project = make_project(client, admin)
    archive = img.zip_of({"ok.png": img.png(), evil: img.png(color=(9, 9, 9))})
    results = by_name(upload(client, project["id"], admin, ("a.zip", archive)).json())
    assert results[f"a.zip/{evil}"]["code"] == "unsafe_path"
    assert results["a.zip/ok.png"]["status"] == "accepted"
    assert stored_rows(app) == 1


def test_a_zip_bomb_is_refused_before_it_is_expanded(client, admin, app, settings):
    app.state.runtime.settings = settings.model_copy(update={"max_zip_bytes": 5 * 1024 * 1024})
    project = make_project(client, admin)
    bomb = img.zip_of({f"zeros{i}.png": b"\0" * (3 * 1024 * 1024) for i in range(2)})
    assert len(bomb) < 20_000  # 6 MB of zeros squeezed into a few KB
    response = upload(client, project["id"], admin, ("bomb.zip", bomb), ("fine.png", img.png()))
    results = by_name(response.json())
    assert results["bomb.zip"]["code"] == "zip_too_large"
    assert "zip bomb" in results["bomb.zip"]["reason"]
    assert results["fine.png"]["status"] == "accepted"


def test_a_broken_zip_is_refused(client, admin):
    project = make_project(client, admin)
    broken = img.zip_of({"a.png": img.png()})[:30]
    response = upload(client, project["id"], admin, ("broken.zip", broken))
    assert response.status_code == 422
    assert response.json()["error"]["details"]["files"][0]["code"] == "bad_zip"


def test_a_zip_member_with_a_bad_crc_is_refused(client, admin):
    project = make_project(client, admin)
    data = bytearray(img.zip_of({"a.png": img.png(64, 64)}, compression=zipfile.ZIP_STORED))
    start = data.index(b"IDAT")
    data[start + 10] ^= 0xFF
    result = upload(client, project["id"], admin, ("crc.zip", bytes(data))).json()["error"]["details"]["files"][0]
    assert result["status"] == "rejected"
    assert result["code"] in {"bad_zip_member", "invalid_image"}


def test_an_upload_without_files_is_a_422(client, admin):
    project = make_project(client, admin)
    response = client.post(f"/api/v1/projects/{project['id']}/images", headers=admin.headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_upload_to_a_project_that_does_not_exist_is_a_404(client, admin):
    response = upload(client, 424242, admin, ("a.png", img.png()))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "project_not_found"


def test_another_projects_image_is_invisible_to_non_members(client, admin, engineer):
    mine, theirs = make_project(client, admin, engineer), make_project(client, admin)
    hidden = upload(client, theirs["id"], admin, ("x.png", img.png())).json()["files"][0]["image_id"]
    for path in ("", "/content", "/thumbnail"):
        response = client.get(f"/api/v1/images/{hidden}{path}", headers=engineer.headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "image_not_found"
    assert client.get(f"/api/v1/projects/{mine['id']}/images", headers=engineer.headers).status_code == 200


def test_missing_or_wrong_token_is_a_401(client, admin):
    project = make_project(client, admin)
    missing = client.post(f"/api/v1/projects/{project['id']}/images", files=[("files", ("a.png", img.png()))])
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_token"
    wrong = client.post(
        f"/api/v1/projects/{project['id']}/images",
        files=[("files", ("a.png", img.png()))],
        headers={"Authorization": "Bearer lw_not-a-real-token"},
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_token"


def test_images_are_listed_in_pages(client, admin):
    project = make_project(client, admin)
    files = [(f"{i}.png", img.png(color=(i, i, i))) for i in range(7)]
    upload(client, project["id"], admin, *files)
    seen, after = [], None
    while True:
        params = {"limit": 3} | ({"after": after} if after else {})
        page = client.get(f"/api/v1/projects/{project['id']}/images", params=params, headers=admin.headers).json()
        seen += [item["original_name"] for item in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == [name for name, _ in files]


def test_the_split_is_fixed_by_the_hash_and_about_a_fifth_is_test(client, admin):
    project = make_project(client, admin)
    files = [(f"{i}.png", img.png(8, 8, color=(i, i // 3, 7))) for i in range(200)]
    results = upload(client, project["id"], admin, *files).json()["files"]
    splits = []
    for result in results:
        splits.append(client.get(f"/api/v1/images/{result['image_id']}", headers=admin.headers).json()["split"])
    assert 0.1 < splits.count("test") / len(splits) < 0.3


def test_a_small_upright_png_is_its_own_thumbnail(client, admin):
    project = make_project(client, admin)
    data = img.png(16, 16)
    image_id = upload(client, project["id"], admin, ("small.png", data)).json()["files"][0]["image_id"]
    assert client.get(f"/api/v1/images/{image_id}/thumbnail", headers=admin.headers).content == data


def test_concurrent_uploads_of_the_same_images_store_each_once(client, admin, app):
    """Racing requests both see the images as new; the database decides, the loser reports duplicates."""
    from concurrent.futures import ThreadPoolExecutor

    from storage.ingest import ingest_uploads

    project = make_project(client, admin)
    files = [(f"{i}.png", img.png(color=(i, 1, 2))) for i in range(20)]
    runtime = app.state.runtime

    def ingest(_):
        return ingest_uploads(
            db=runtime.db,
            blobs=runtime.blobs,
            limits=runtime.limits,
            project_id=project["id"],
            uploads=[(name, io.BytesIO(data)) for name, data in files],
        )

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(ingest, range(4)))
    accepted = [r for results in outcomes for r in results if r.status == "accepted"]
    assert sorted(r.name for r in accepted) == sorted(name for name, _ in files)
    ids = {r.name: r.image_id for results in outcomes for r in results}
    assert all(r.image_id == ids[r.name] for results in outcomes for r in results)
    assert stored_rows(app) == 20
