"""The API process serves predictions and pre-labels without torch (onnxruntime and numpy only), and decodes what
it is sent for /predict only after the model and the request's limits are checked, at the model's input size."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from flywheel.serving.preprocess import to_array
from storage.imagecheck import decode_for_model, decoded_pixels
from tests import imagefactory as img
from tests.digits import digits
from tests.factories import make_project

# Run in a fresh interpreter (this one has torch loaded for training): the app, one /predict, one pre-label.
SERVE_ONCE = textwrap.dedent(
    """
    import json, sys
    from fastapi.testclient import TestClient
    from service.app import create_app
    from storage.settings import load_settings

    data_dir, database_url, project_id, engineer, annotator, png_path = sys.argv[1:]
    client = TestClient(create_app(load_settings(data_dir=data_dir, database_url=database_url), migrate=False))
    started = sorted(name for name in ("torch", "sklearn", "scipy", "pandas") if name in sys.modules)
    from service.app import DEFERRED_IMPORTS, settle_heap
    settle_heap().join(timeout=60)  # as `serve` does: they follow in a thread, not under a request's write lock
    deferred = [name for name in DEFERRED_IMPORTS if name not in sys.modules]
    with open(png_path, "rb") as png:
        files = [("files", ("digit.png", png.read(), "image/png"))]
    predicted = client.post(
        f"/api/v1/projects/{project_id}/predict", files=files, headers={"Authorization": f"Bearer {engineer}"}
    )
    task = client.get(f"/api/v1/projects/{project_id}/tasks/next", headers={"Authorization": f"Bearer {annotator}"})
    loaded = sorted(name for name in ("torch", "torchvision", "albumentations") if name in sys.modules)
    answer = {"predict": predicted.json(), "task": task.json(), "loaded": loaded}
    print(json.dumps(answer | {"started": started, "deferred": deferred}))
    """
)


@pytest.mark.slow
def test_the_api_process_predicts_and_prelabels_without_loading_torch(trained, tmp_path):
    settings = trained.app.state.runtime.settings
    png = tmp_path / "digit.png"
    png.write_bytes(digits()[0][0])
    args = [
        str(settings.data_dir),
        settings.resolved_database_url,
        str(trained.project["id"]),
        trained.engineer.token,
        trained.annotator.token,
        str(png),
    ]
    done = subprocess.run([sys.executable, "-c", SERVE_ONCE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    version = f"model-{trained.champion_id}"
    assert answer["predict"]["model_version"] == version
    assert answer["predict"]["predictions"][0]["label"] in {str(d) for d in range(10)}
    assert answer["task"]["prelabel"]["model_version"] == version
    assert answer["loaded"] == []
    # Nor does it import scipy or scikit-learn until a request needs them: they were half its start-up.
    assert answer["started"] == []
    assert answer["deferred"] == []  # until settle_heap's thread has imported them


def predict(client, project_id: int, headers: dict, *files: tuple[str, bytes]):
    return client.post(
        f"/api/v1/projects/{project_id}/predict", files=[("files", file) for file in files], headers=headers
    )


def test_predict_answers_no_model_before_reading_the_files(client, admin, engineer):
    project = make_project(client, admin, engineer)
    response = predict(client, project["id"], engineer.headers, ("junk.png", b"not an image"), ("a.png", img.png()))
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_model"


def test_predict_refuses_too_many_files_or_pixels_before_decoding_any(trained):
    client, headers, project_id = trained.client, trained.engineer.headers, trained.project["id"]
    # The request: 12 PNGs of 7999x7999 (these declare it in their header, with no pixel data behind:
    # decoding one would fail as truncated, so the answer shows that none was decoded).
    bombs = [(f"{i}.png", img.png_header_only(7999, 7999)) for i in range(12)]
    response = predict(client, project_id, headers, *bombs)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_pixels" and "LABELWHEEL_PREDICT_MAX_PIXELS" in error["message"]

    runtime = trained.app.state.runtime
    runtime.settings = runtime.settings.model_copy(update={"predict_max_files": 2, "predict_max_pixels": 1_000_000})
    three = predict(client, project_id, headers, *[(f"{i}.png", img.png(8, 8, (i, 0, 0))) for i in range(3)])
    assert three.status_code == 413 and three.json()["error"]["code"] == "too_many_files"
    assert "LABELWHEEL_PREDICT_MAX_FILES" in three.json()["error"]["message"]

    # 1600x1600 is 2.56 million pixels: too many as a PNG, which decodes whole; a JPEG decodes at 1/8 scale.
    big = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).resize((1600, 1600))
    as_png = predict(client, project_id, headers, ("big.png", encoded(big, "PNG")))
    assert as_png.status_code == 413 and as_png.json()["error"]["code"] == "too_many_pixels"
    as_jpeg = predict(client, project_id, headers, ("big.jpg", encoded(big, "JPEG")))
    assert as_jpeg.status_code == 200, as_jpeg.text


def test_a_large_image_is_predicted_as_its_full_size_preprocessing_would_be(trained):
    client, headers, project_id = trained.client, trained.engineer.headers, trained.project["id"]
    digit = Image.open(io.BytesIO(digits()[0][3]))
    big = digit.resize((1200, 900), Image.Resampling.BICUBIC)  # reduced on decoding: the model's input is 16 px
    full_size = Image.fromarray(to_array(big, 16))  # what preprocessing makes of the whole image
    answers = predict(
        client, project_id, headers, ("big.png", encoded(big, "PNG")), ("full.png", encoded(full_size, "PNG"))
    )
    assert answers.status_code == 200, answers.text
    reduced, reference = (p["probabilities"] for p in answers.json()["predictions"])
    assert max(abs(reduced[label] - reference[label]) for label in reference) < 0.02


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decoding_for_a_model_reduces_large_images_and_keeps_small_ones_whole(fmt):
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).resize((900, 1200), Image.BICUBIC)
    data = encoded(smooth, fmt)
    decoded = decode_for_model(io.BytesIO(data), max_pixels=10**7, size=64)
    # A PNG is decoded whole, then reduced to the input size; a JPEG decodes at 1/4 scale, within 3 x 64 px.
    decoded_size = (64, 64) if fmt == "PNG" else (900 // 4, 1200 // 4)
    assert decoded.size == decoded_size
    pixels = 900 * 1200 if fmt == "PNG" else decoded_size[0] * decoded_size[1]
    assert decoded_pixels(io.BytesIO(data), max_pixels=10**7, size=64) == pixels
    difference = np.abs(to_array(decoded, 64).astype(int) - to_array(Image.open(io.BytesIO(data)), 64))
    assert difference.max() <= 3

    small = encoded(smooth.resize((150, 200)), fmt)  # under 3 x 64 px a side: decoded whole, as training does
    whole = decode_for_model(io.BytesIO(small), max_pixels=10**7, size=64)
    assert np.array_equal(np.asarray(whole), np.asarray(Image.open(io.BytesIO(small)).convert("RGB")))


def test_decoding_for_a_model_turns_the_image_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    out = io.BytesIO()
    Image.linear_gradient("L").resize((2400, 600)).convert("RGB").save(out, format="JPEG", exif=exif)
    decoded = decode_for_model(io.BytesIO(out.getvalue()), max_pixels=10**7, size=16)
    reference = to_array(Image.open(io.BytesIO(out.getvalue())), 16)  # exif_transpose on the whole image
    assert np.abs(to_array(decoded, 16).astype(int) - reference).max() <= 3


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, quality=95) if fmt == "JPEG" else image.save(out, format=fmt)
    return out.getvalue()
