"""After deployment, through the HTTP API on the shared trained project: every /predict answer is logged with its
embedding, low-confidence production images flow into the pool once, a broken store never fails a prediction, and
a champion whose files are broken hands over to the champion before it, saying so, until its files are back."""

from __future__ import annotations

import io
import logging
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import func, select

from service.app import create_app
from storage.models import Image, ImageSource, ModelVersion, PredictionLog
from storage.settings import load_settings
from tests.digits import digits
from tests.factories import make_project
from tests.jobs import run


def predict(trained, files: list[tuple[str, bytes]], client=None):
    response = (client or trained.client).post(
        f"/api/v1/projects/{trained.project['id']}/predict",
        files=[("files", file) for file in files],
        headers=trained.engineer.headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


def monitoring(trained, **settings) -> None:
    patched = trained.client.patch(
        f"/api/v1/projects/{trained.project['id']}/settings",
        json={"settings": {"monitoring": settings}},
        headers=trained.admin.headers,
    )
    assert patched.status_code == 200, patched.text


def logged(trained) -> list[PredictionLog]:
    with trained.app.state.runtime.db.read_session() as session:
        return list(session.scalars(select(PredictionLog).order_by(PredictionLog.id)))


def production_images(trained) -> dict[str, int]:
    with trained.app.state.runtime.db.read_session() as session:
        rows = session.execute(select(Image.sha256, Image.id).where(Image.source == ImageSource.production))
        return dict(rows.all())


def unseen(count: int) -> list[tuple[str, bytes]]:
    """Digits the project never uploaded (it holds the first 300)."""
    pngs, _ = digits()
    return [(f"prod-{i}.png", pngs[i]) for i in range(400, 400 + count)]


def test_answers_are_logged_and_low_confidence_production_images_reach_the_pool_once(trained):
    files = unseen(12)
    first = predict(trained, files)  # capture is off by default: logged only
    rows = logged(trained)
    assert len(rows) == 12 and production_images(trained) == {}
    assert {r.model_id for r in rows} == {first["model_id"]} and not any(r.fallback for r in rows)
    assert [r.label for r in rows] == [p["label"] for p in first["predictions"]]
    assert len({len(r.embedding) for r in rows}) == 1 and len(rows[0].embedding) >= 4 * 16  # float32, one width

    confidences = sorted(p["confidence"] for p in first["predictions"])
    threshold = (confidences[5] + confidences[6]) / 2  # the 6 least confident are captured
    monitoring(trained, capture="low_confidence", capture_below=threshold)
    again = predict(trained, files)
    low = {name for (name, _), p in zip(files, again["predictions"], strict=True) if p["confidence"] < threshold}
    assert len(low) == 6
    captured = production_images(trained)
    assert len(captured) == 6
    with trained.app.state.runtime.db.read_session() as session:
        names = set(session.scalars(select(Image.original_name).where(Image.id.in_(captured.values()))))
    assert names == low
    newest = logged(trained)[12:]
    assert {r.image_id for r in newest if r.image_id is not None} == set(captured.values())

    predict(trained, files)  # the same images again: deduplicated, nothing more in the pool
    assert production_images(trained) == captured and len(logged(trained)) == 36

    # A captured image waits in the labeling queue as an uploaded one does (mining ranks both alike).
    with trained.app.state.runtime.db.read_session() as session:
        waiting = session.execute(
            select(Image.source, Image.queue_tier, Image.labels_needed).where(Image.label_count == 0)
        ).all()
    assert {source for source, *_ in waiting if source is ImageSource.production} == {ImageSource.production}
    assert len({(tier, needed) for _, tier, needed in waiting}) == 1 and waiting[0][2] >= 1


def test_a_broken_store_never_fails_a_prediction_it_is_logged_and_counted(trained, caplog):
    monitoring(trained, capture="all")
    predict(trained, unseen(1))  # loads the model while the store works
    blobs = trained.app.state.runtime.settings.data_dir / "blobs"
    shutil.move(blobs, blobs.with_name("blobs-away"))
    blobs.write_text("not a folder: every write into the store fails")
    try:
        with caplog.at_level(logging.ERROR, logger="flywheel.serving.prediction_log"):
            answer = predict(trained, unseen(3)[1:])
    finally:
        blobs.unlink()
        shutil.move(blobs.with_name("blobs-away"), blobs)
    assert len(answer["predictions"]) == 2 and not answer["fallback"]
    assert len(logged(trained)) == 3 and len(production_images(trained)) == 1
    assert "could not be staged" in caplog.text
    metrics = trained.client.get("/metrics", headers=trained.admin.headers).text
    assert 'labelwheel_prediction_log_failures_total{stage="capture"}' in metrics


def second_model(trained) -> int:
    """A second full model of the project, trained for one epoch (not promoted)."""
    project_id, engineer = trained.project["id"], trained.engineer.headers
    patched = trained.client.patch(
        f"/api/v1/projects/{project_id}/settings",
        json={"settings": {"training": {"epochs": 1, "average_epochs": 0}}},
        headers=trained.admin.headers,
    )
    assert patched.status_code == 200, patched.text
    job = trained.client.post(
        f"/api/v1/projects/{project_id}/jobs", json={"kind": "train", "params": {"force": True}}, headers=engineer
    ).json()
    run(trained.app, job["id"])
    return trained.client.get(f"/api/v1/jobs/{job['id']}", headers=engineer).json()["result"]["model_id"]


def test_a_champion_with_broken_files_hands_over_to_the_one_before_until_they_are_back(trained, tmp_path, caplog):
    """First as a canary: a canary that cannot answer leaves its share to the champion, which is no fallback."""
    project_id, engineer = trained.project["id"], trained.engineer.headers
    second = second_model(trained)
    canary = {"mode": "canary", "share": 1.0}
    deployed = trained.client.put(f"/api/v1/models/{second}/deployment", json=canary, headers=engineer)
    assert deployed.status_code == 200, deployed.text

    settings = trained.app.state.runtime.settings
    app = create_app(
        load_settings(data_dir=settings.data_dir, database_url=settings.resolved_database_url, model_retry_seconds=0),
        migrate=False,
    )
    client = TestClient(app)
    with app.state.runtime.db.read_session() as session:
        onnx = session.get_one(ModelVersion, second).onnx_sha256
    stored = app.state.runtime.blobs.read_bytes(onnx)
    path = app.state.runtime.blobs.path(onnx)
    path.write_bytes(b"not an onnx model")

    answer = predict(trained, unseen(2), client)
    assert (answer["model_id"], answer["fallback"]) == (trained.champion_id, False)
    assert client.get("/health").json()["status"] == "ok"
    promoted = trained.client.post(f"/api/v1/models/{second}/promote", json={"reason": "test"}, headers=engineer)
    assert promoted.status_code == 200, promoted.text

    with caplog.at_level(logging.ERROR, logger="flywheel.serving.inference"):
        answer = predict(trained, unseen(2), client)
    assert (answer["model_id"], answer["fallback"]) == (trained.champion_id, True)
    assert f"model {second} cannot answer" in answer["fallback_reason"]
    assert f"model {second} cannot answer" in caplog.text
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert f"model {second}" in health.json()["fallback"][str(project_id)]
    task = client.get(f"/api/v1/projects/{project_id}/tasks/next", headers=trained.annotator.headers).json()
    assert task["prelabel"]["model_version"] == f"model-{trained.champion_id}" and task["prelabel"]["fallback"]
    with app.state.runtime.db.read_session() as session:
        fallback_rows = session.scalar(select(func.count()).where(PredictionLog.fallback.is_(True)))
    assert fallback_rows == 2

    path.write_bytes(stored)  # the files are back: the champion answers again and health recovers
    answer = predict(trained, unseen(1), client)
    assert (answer["model_id"], answer["fallback"]) == (second, False)
    assert client.get("/health").json()["status"] == "ok"
    app.state.runtime.db.dispose()


def shifted(data: bytes, factor: float) -> bytes:
    """A digit with its brightness scaled (0.5: halved), as a camera with another exposure would see it."""
    with PILImage.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image, dtype=np.float32) * factor
    out = io.BytesIO()
    PILImage.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def test_a_drift_job_tells_a_shifted_window_from_an_unshifted_one(trained):
    project_id, engineer = trained.project["id"], trained.engineer.headers

    def job(kind: str) -> dict:
        created = trained.client.post(f"/api/v1/projects/{project_id}/jobs", json={"kind": kind}, headers=engineer)
        assert created.status_code == 201, created.text
        run(trained.app, created.json()["id"])
        return trained.client.get(f"/api/v1/jobs/{created.json()['id']}", headers=engineer).json()

    too_early = job("drift")
    assert too_early["status"] == "failed" and "logged predictions" in too_early["error"]
    assert job("embed")["status"] == "succeeded"  # the champion's embeddings of its training images
    monitoring(trained, drift_window=70, capture="all")
    # Production sends images like the project's own: its unlabeled ones (load_digits is ordered by writer, so
    # digits past the 300 uploaded come from other people: a real shift the domain classifier sees).
    rt = trained.app.state.runtime
    with rt.db.read_session() as session:
        unlabeled = session.scalars(select(Image.sha256).where(Image.label_count == 0).order_by(Image.id)).all()
    pool = [rt.blobs.read_bytes(sha256) for sha256 in unlabeled]
    predict(trained, [(f"same-{i}.png", data) for i, data in enumerate(pool[::2])])  # writers alike on both sides
    calm = job("drift")
    assert calm["status"] == "succeeded", calm
    predict(trained, [(f"dim-{i}.png", shifted(data, 0.5)) for i, data in enumerate(pool[1::2])])
    dim = job("drift")
    assert dim["status"] == "succeeded", dim

    series = trained.client.get(f"/api/v1/projects/{project_id}/drift", headers=engineer).json()
    first, second = series["points"]
    assert (first["status"], second["status"]) == ("ok", "drift")
    assert first["domain_auc"] < 0.55 < second["domain_auc"] and second["mmd_p"] < 0.01 < first["mmd_p"]
    assert first["predictions"] == second["predictions"] == 70 and first["reference"] >= 50
    assert dim["result"]["drift_point_id"] == second["id"]
    drifted = series["most_drifted"]
    assert len(drifted) == 12 and all(item["thumbnail_url"] for item in drifted)
    with trained.app.state.runtime.db.read_session() as session:
        names = set(session.scalars(select(Image.original_name).where(Image.id.in_([d["image_id"] for d in drifted]))))
    assert sum(name.startswith("dim-") for name in names) >= 10  # the shifted ones, mostly
    thumbnail = trained.client.get(drifted[0]["thumbnail_url"], headers=engineer)
    assert thumbnail.status_code == 200

    nightly = trained.client.put(
        f"/api/v1/projects/{project_id}/schedules", json={"drift": "0 * * * *"}, headers=engineer
    )
    assert nightly.status_code == 200 and [s["kind"] for s in nightly.json()] == ["drift"], nightly.text

    monitoring(trained, drift_window_hours=1)  # by time instead of count: both windows are in the last hour
    assert job("drift")["status"] == "succeeded"
    latest = trained.client.get(f"/api/v1/projects/{project_id}/drift", headers=engineer).json()["points"][-1]
    assert latest["predictions"] == len(pool) and latest["status"] == "drift"


def test_shadow_and_canary_models_meet_the_same_traffic_and_are_compared_then_promoted(trained):
    project_id, engineer = trained.project["id"], trained.engineer.headers
    challenger = second_model(trained)
    url = f"/api/v1/models/{challenger}/deployment"
    refused = trained.client.put(
        f"/api/v1/models/{trained.champion_id}/deployment", json={"mode": "shadow"}, headers=engineer
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_not_deployable"
    no_share = trained.client.put(url, json={"mode": "canary"}, headers=engineer)
    assert no_share.status_code == 422

    monitoring(trained, capture="all")
    shadow = trained.client.put(url, json={"mode": "shadow"}, headers=engineer)
    assert shadow.status_code == 200 and shadow.json()["deployment"] == "shadow"
    pngs, truth = digits()
    files = [(f"live-{i}.png", pngs[i]) for i in range(400, 420)]
    answers = predict(trained, files)
    assert answers["model_id"] == trained.champion_id  # a shadow never answers
    rows = logged(trained)
    assert sorted((r.role, r.model_id) for r in rows) == sorted(
        [("served", trained.champion_id)] * 20 + [("shadow", challenger)] * 20
    )

    canary = trained.client.put(url, json={"mode": "canary", "share": 1.0}, headers=engineer)
    assert canary.status_code == 200 and canary.json()["traffic_share"] == 1.0
    answered = predict(trained, [(f"more-{i}.png", pngs[i]) for i in range(420, 440)])
    assert answered["model_id"] == challenger  # all of the traffic: its share is 1

    # People label the captured images: accuracy on them, both models, with the promotion's paired test.
    with trained.app.state.runtime.db.read_session() as session:
        captured = dict(
            session.execute(select(Image.original_name, Image.id).where(Image.source == ImageSource.production)).all()
        )
    assert len(captured) == 40
    for name, image_id in captured.items():
        index = int(name.split("-")[1].split(".")[0])
        stored = trained.client.post(
            f"/api/v1/projects/{project_id}/annotations",
            json={"image_id": image_id, "label": str(truth[index])},
            headers=trained.annotator.headers,
        )
        assert stored.status_code == 201, stored.text
    per_day = trained.client.get(f"/api/v1/projects/{project_id}/predictions/per-day", headers=engineer).json()
    assert [(d["served"], d["fallback"], d["shadow"]) for d in per_day] == [(40, 0, 40)]  # all of it today
    (compared,) = trained.client.get(f"/api/v1/projects/{project_id}/deployments", headers=engineer).json()
    assert (compared["model_id"], compared["deployment"], compared["compared"]) == (challenger, "canary", 40)
    assert compared["labeled"] == 40 and 0 <= compared["agreement"] <= 1
    assert compared["accuracy"] is not None and compared["serving_accuracy"] is not None
    assert 0 < compared["p_value"] <= 1 and compared["verdict"]
    assert compared["latency_ms"] > 0 and compared["serving_latency_ms"] > 0

    promoted = trained.client.post(
        f"/api/v1/models/{challenger}/promote", json={"reason": "canary held up"}, headers=engineer
    )
    assert promoted.status_code == 200
    assert trained.client.get(f"/api/v1/projects/{project_id}/deployments", headers=engineer).json() == []


def test_a_distilled_student_and_an_int8_model_are_registered_with_lineage_and_serve(trained):
    project_id, engineer = trained.project["id"], trained.engineer.headers
    patched = trained.client.patch(
        f"/api/v1/projects/{project_id}/settings",
        json={"settings": {"distillation": {"epochs": 3, "input_size": 8}}},
        headers=trained.admin.headers,
    )
    assert patched.status_code == 200, patched.text

    def job(kind: str, params: dict | None = None) -> dict:
        created = trained.client.post(
            f"/api/v1/projects/{project_id}/jobs", json={"kind": kind, "params": params or {}}, headers=engineer
        )
        assert created.status_code == 201, created.text
        run(trained.app, created.json()["id"])
        done = trained.client.get(f"/api/v1/jobs/{created.json()['id']}", headers=engineer).json()
        assert done["status"] == "succeeded", done
        return trained.client.get(f"/api/v1/models/{done['result']['model_id']}", headers=engineer).json()

    student = job("distill")
    assert (student["parent_id"], student["input"]["size"], student["status"]) == (trained.champion_id, 8, "candidate")
    assert student["hyperparameters"]["distilled_from"] == trained.champion_id
    metrics = student["metrics"]
    assert metrics["distilled_on"] > 150  # labeled and unlabeled images alike, the test split left out
    assert metrics["test_accuracy"] > 0.3 and metrics["teacher_test_accuracy"] > 0.5  # chance is 0.1
    assert metrics["latency_ms_per_image"] > 0 and metrics["teacher_latency_ms_per_image"] > 0

    int8 = job("quantize", {"model_id": trained.champion_id, "calibration_images": 64})
    assert int8["parent_id"] == trained.champion_id and int8["hyperparameters"]["int8"] is True
    assert len(int8["hyperparameters"]["calibration_image_ids"]) == 64
    assert int8["metrics"]["agreement_with_float"] >= 0.9
    assert int8["metrics"]["onnx_bytes"] < int8["metrics"]["float_onnx_bytes"]

    pngs, _ = digits()
    for model in (student, int8):
        onnx = trained.client.get(f"/api/v1/models/{model['id']}/download", params={"format": "onnx"}, headers=engineer)
        assert onnx.status_code == 200 and len(onnx.content) > 1000
        promoted = trained.client.post(
            f"/api/v1/models/{model['id']}/promote", json={"reason": "edge"}, headers=engineer
        )
        assert promoted.status_code == 200, promoted.text
        answer = predict(trained, [("edge.png", pngs[500])])
        assert answer["model_id"] == model["id"] and not answer["fallback"]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_models_made_canary_at_once_leave_one_canary(app, client, admin):
    """The second of two concurrent requests waits for the first and is told the project has its canary."""
    from concurrent.futures import ThreadPoolExecutor

    from flywheel.serving.registry import Deployment, deploy
    from storage.errors import Conflict
    from storage.models import ModelKind, ModelStatus

    project = make_project(client, admin)
    db = app.state.runtime.db
    with db.session() as session:
        rows = [
            ModelVersion(
                project_id=project["id"],
                kind=ModelKind.full,
                status=ModelStatus.candidate,
                architecture="small_cnn",
                input_size=32,
                labels=project["labels"],
                hyperparameters={},
                seed=0,
                onnx_sha256="0" * 64,
                head_sha256="1" * 64,
            )
            for _ in range(2)
        ]
        session.add_all(rows)
        session.flush()
        first_id, second_id = (row.id for row in rows)

    def make_canary(model_id: int) -> None:
        with db.session() as session:
            deploy(session, model=session.get(ModelVersion, model_id), mode=Deployment.canary, share=0.1)

    with ThreadPoolExecutor(1) as other:
        with db.session() as session:
            deploy(session, model=session.get(ModelVersion, first_id), mode=Deployment.canary, share=0.1)
            second = other.submit(make_canary, second_id)  # waits on the project row until this session commits
            with pytest.raises(TimeoutError):
                second.result(timeout=0.5)
        with pytest.raises(Conflict, match=f"model {first_id} is the project's canary already"):
            second.result(timeout=30)
    with db.read_session() as session:
        canaries = session.scalars(select(ModelVersion.id).where(ModelVersion.deployment == "canary")).all()
    assert canaries == [first_id]
