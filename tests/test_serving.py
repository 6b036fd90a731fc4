"""The API process serves predictions and pre-labels without torch: serving is onnxruntime and numpy only."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.digits import digits

pytestmark = pytest.mark.slow

# Run in a fresh interpreter (this one has torch loaded for training): the app, one /predict, one pre-label.
SERVE_ONCE = textwrap.dedent(
    """
    import json, sys
    from fastapi.testclient import TestClient
    from service.app import create_app
    from storage.settings import load_settings

    data_dir, database_url, project_id, engineer, annotator, png_path = sys.argv[1:]
    client = TestClient(create_app(load_settings(data_dir=data_dir, database_url=database_url), migrate=False))
    with open(png_path, "rb") as png:
        files = [("files", ("digit.png", png.read(), "image/png"))]
    predicted = client.post(
        f"/api/v1/projects/{project_id}/predict", files=files, headers={"Authorization": f"Bearer {engineer}"}
    )
    task = client.get(f"/api/v1/projects/{project_id}/tasks/next", headers={"Authorization": f"Bearer {annotator}"})
    loaded = sorted(name for name in ("torch", "torchvision", "albumentations") if name in sys.modules)
    print(json.dumps({"predict": predicted.json(), "task": task.json(), "loaded": loaded}))
    """
)


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
