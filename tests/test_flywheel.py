"""The flywheel in one process: jobs, snapshots, training, promotion, refresh, registry and predictions.

Jobs here run through the same ``run_job`` the worker calls, on the app's own database and blob
store; tests/test_worker.py runs them through real worker processes.
"""

from __future__ import annotations

import io
import json
from datetime import datetime

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sqlalchemy import func, select

from flywheel.policy import start_policy_jobs
from flywheel.serving.preprocess import normalize, to_array
from storage.models import Job, JobKind, JobStatus, ModelStatus, ModelVersion, Role
from tests import imagefactory as img
from tests.digits import digit_project, digits, label_digits
from tests.factories import make_project, make_user
from tests.jobs import run

pytestmark = pytest.mark.slow


def start(client, project, account, kind="train", **params) -> dict:
    response = client.post(
        f"/api/v1/projects/{project['id']}/jobs", json={"kind": kind, "params": params}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def job(client, account, job_id) -> dict:
    return client.get(f"/api/v1/jobs/{job_id}", headers=account.headers).json()


@pytest.fixture
def team(app):
    return make_user(app, "eng", Role.engineer), make_user(app, "ann", Role.annotator)


def train_once(app, client, engineer, project, **params) -> dict:
    created = start(client, project, engineer, **params)
    assert run(app, created["id"]) == JobStatus.succeeded, job(client, engineer, created["id"])
    return job(client, engineer, created["id"])


def test_a_training_job_snapshots_trains_evaluates_and_promotes_the_first_model(trained):
    client, engineer, project = trained.client, trained.engineer, trained.project
    done = job(client, engineer, trained.train_job_id)
    assert done["progress"] == 1.0 and done["attempts"] == 1
    card = client.get(f"/api/v1/projects/{project['id']}/models/champion", headers=engineer.headers).json()
    assert card["id"] == done["result"]["model_id"] and card["status"] == "champion"
    metrics = card["metrics"]
    assert metrics["test_accuracy"] > metrics["baseline_accuracy"]
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["test_items"]
    wrong = metrics["wrong_test_images"]
    assert len(wrong) == round((1 - metrics["test_accuracy"]) * metrics["test_items"])
    assert all(w["label"] != w["predicted"] for w in wrong)
    assert card["decision"]["compared_with"] == "baseline" and card["decision"]["promote"] is True
    snapshot = card["snapshot"]
    assert snapshot["item_count"] == 150 and snapshot["stats"]["train"] + snapshot["stats"]["test"] == 150
    assert card["hyperparameters"]["epochs"] == 15 and card["seed"] == 0 and card["architecture"] == "small_cnn"
    # 120 training labels: a 12-image dev split would judge nothing, so all train and the last 5 epochs average.
    assert metrics["dev_items"] == 0 and metrics["train_items"] == snapshot["stats"]["train"]
    assert card["hyperparameters"]["min_dev_images"] == 100 and card["hyperparameters"]["average_epochs"] == 5
    assert card["artefacts"]["onnx_sha256"] and card["artefacts"]["weights_sha256"]
    assert metrics["onnx_max_difference"] <= 1e-4
    # One annotator, no overlap: the human-level reference says why it has no figure.
    assert card["human_reference"]["pooled_accuracy"] is None and card["human_reference"]["reason"]


def test_a_training_on_the_champions_labels_and_settings_is_skipped_unless_forced(trained):
    client, engineer, project, first = trained.client, trained.engineer, trained.project, trained.champion_id
    repeat = train_once(trained.app, client, engineer, project)
    assert repeat["result"]["skipped"] is True and repeat["result"]["model_id"] == first
    assert f"model {first} was trained on the same 150 labels" in repeat["result"]["message"]
    models = client.get(f"/api/v1/projects/{project['id']}/models", headers=engineer.headers).json()
    assert [m["id"] for m in models] == [first]  # no second model, no embed or mining pass

    # Forced, the same snapshot, seed and settings give the same model.
    second = train_once(trained.app, client, engineer, project, force=True)["result"]["model_id"]
    one, two = (client.get(f"/api/v1/models/{m}", headers=engineer.headers).json() for m in (first, second))
    assert one["snapshot"]["id"] == two["snapshot"]["id"]
    assert one["metrics"]["test_accuracy"] == two["metrics"]["test_accuracy"]
    assert one["metrics"]["history"] == two["metrics"]["history"]
    assert one["metrics"]["confusion_matrix"] == two["metrics"]["confusion_matrix"]
    # The second is judged against the first on the same test items; identical predictions are not worse.
    assert two["decision"]["compared_with"] == "champion" and two["decision"]["champion_id"] == first
    assert two["decision"]["champion_only_right"] == two["decision"]["candidate_only_right"] == 0
    assert two["parent_id"] == first and two["lineage"][0]["id"] == first


def test_onnx_download_runs_in_onnxruntime_and_matches_pytorch(trained):
    client, engineer, project, model_id = trained.client, trained.engineer, trained.project, trained.champion_id
    onnx = client.get(f"/api/v1/models/{model_id}/download?format=onnx", headers=engineer.headers)
    assert onnx.status_code == 200 and onnx.headers["content-type"] == "application/octet-stream"
    weights = client.get(f"/api/v1/models/{model_id}/download?format=weights", headers=engineer.headers)
    checkpoint = torch.load(io.BytesIO(weights.content), weights_only=True)
    from flywheel.training.architectures import build_model

    network = build_model(checkpoint["architecture"], len(checkpoint["labels"]))
    network.load_state_dict(checkpoint["state_dict"])
    network.eval()
    pngs, _ = digits()
    from PIL import Image

    batch = torch.from_numpy(
        normalize(np.stack([to_array(Image.open(io.BytesIO(p)), checkpoint["input_size"]) for p in pngs[:64]]))
    )
    session = ort.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
    # The file says how to use it: label order, input size, normalisation, preprocessing, version.
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labelwheel.labels"]) == [str(d) for d in range(10)]
    assert meta["labelwheel.input_size"] == str(checkpoint["input_size"]) == "16"
    assert json.loads(meta["labelwheel.mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta["labelwheel.std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert "bilinear" in meta["labelwheel.preprocessing"] and meta["labelwheel.model_version"] == f"model-{model_id}"
    (onnx_logits,) = session.run(["logits"], {"input": batch.numpy()})
    with torch.no_grad():
        torch_logits = network(batch).numpy()
    assert np.abs(onnx_logits - torch_logits).max() <= 1e-4
    card = client.get(f"/api/v1/models/{model_id}/download?format=card", headers=engineer.headers)
    assert card.json()["id"] == model_id and "attachment" in card.headers["content-disposition"]

    files = [("files", (f"{i}.png", pngs[i], "image/png")) for i in range(5)]
    predicted = client.post(f"/api/v1/projects/{project['id']}/predict", files=files, headers=engineer.headers)
    assert predicted.status_code == 200, predicted.text
    body = predicted.json()
    assert body["model_id"] == model_id and body["model_version"] == f"model-{model_id}"
    probabilities = torch.softmax(torch.from_numpy(onnx_logits[:5]), dim=1).numpy()
    for row, answer in zip(probabilities, body["predictions"], strict=True):
        assert answer["label"] == str(int(row.argmax()))
        assert answer["probabilities"][answer["label"]] == pytest.approx(float(row.max()), abs=1e-4)


def test_refresh_refits_the_head_on_cached_embeddings_and_serves_it(trained):
    app, client, engineer, annotator = trained.app, trained.client, trained.engineer, trained.annotator
    project, truth, champion_id = trained.project, trained.truth, trained.champion_id
    db = app.state.runtime.db
    with db.read_session() as session:
        embed_job = session.scalars(select(Job).where(Job.kind == JobKind.embed)).one()
    assert run(app, embed_job.id) == JobStatus.succeeded
    assert job(client, engineer, embed_job.id)["result"]["images"] == 300

    label_digits(client, project, annotator, truth, 10)
    assert start_policy_jobs(db, app.state.runtime.transport, project_id=project["id"]) == [JobKind.refresh]
    with db.read_session() as session:
        refresh_job = session.scalars(select(Job).where(Job.kind == JobKind.refresh)).one()
    assert run(app, refresh_job.id) == JobStatus.succeeded
    refreshed = job(client, engineer, refresh_job.id)["result"]["model_id"]
    card = client.get(f"/api/v1/models/{refreshed}", headers=engineer.headers).json()
    assert card["kind"] == "refresh" and card["parent_id"] == champion_id and card["snapshot"]["item_count"] == 160
    assert card["metrics"]["test_accuracy"] > card["metrics"]["baseline_accuracy"]

    pngs, _ = digits()
    predicted = client.post(
        f"/api/v1/projects/{project['id']}/predict",
        files=[("files", ("a.png", pngs[0], "image/png"))],
        headers=engineer.headers,
    ).json()
    assert predicted["model_id"] == refreshed
    task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers).json()
    assert task["prelabel"]["model_version"] == f"model-{refreshed}"
    assert task["prelabel"]["label"] in [str(d) for d in range(10)]
    # Nothing new since: no second refresh. No export either: the head serves on the champion's ONNX backbone.
    assert start_policy_jobs(db, app.state.runtime.transport, project_id=project["id"]) == []
    with db.read_session() as session:
        assert session.scalars(select(Job).where(Job.kind == JobKind.export)).all() == []
    models = f"/api/v1/projects/{project['id']}/models"
    assert [m["id"] for m in client.get(models, headers=engineer.headers).json()] == [champion_id]
    assert [m["id"] for m in client.get(f"{models}?kind=refresh", headers=engineer.headers).json()] == [refreshed]
    assert len(client.get(f"{models}?kind=all", headers=engineer.headers).json()) == 2

    # The first download asks for the files; asking again while they are made joins the same job.
    pending = client.get(f"/api/v1/models/{refreshed}/download?format=onnx", headers=engineer.headers)
    assert pending.status_code == 202 and pending.headers["retry-after"] == "5", pending.text
    again = client.get(f"/api/v1/models/{refreshed}/download?format=weights", headers=engineer.headers)
    assert again.status_code == 202 and again.json()["job_id"] == pending.json()["job_id"]
    assert run(app, pending.json()["job_id"]) == JobStatus.succeeded
    onnx = client.get(f"/api/v1/models/{refreshed}/download?format=onnx", headers=engineer.headers)
    assert onnx.status_code == 200
    session_ = ort.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
    assert [o.name for o in session_.get_outputs()] == ["logits", "embedding"]
    assert session_.get_modelmeta().custom_metadata_map["labelwheel.model_version"] == f"model-{refreshed}"
    weights = client.get(f"/api/v1/models/{refreshed}/download?format=weights", headers=engineer.headers)
    assert torch.load(io.BytesIO(weights.content), weights_only=True)["architecture"] == "small_cnn"

    # Heads that stopped serving lose their files (past the kept ones and the grace period); rows stay.
    rt = app.state.runtime
    rt.settings = rt.settings.model_copy(update={"refresh_heads_kept": 0, "refresh_prune_grace_seconds": 0})
    # Labels within refresh_interval_seconds of a refresh: one more refresh, an interval after that one's start.
    url = f"/api/v1/projects/{project['id']}/settings"
    interval = {"settings": {"training": {"refresh_interval_seconds": 3600}}}
    client.patch(url, json=interval, headers=trained.admin.headers).raise_for_status()
    label_digits(client, project, annotator, truth, 3)
    assert start_policy_jobs(db, rt.transport, project_id=project["id"]) == [JobKind.refresh]
    label_digits(client, project, annotator, truth, 2)
    assert start_policy_jobs(db, rt.transport, project_id=project["id"]) == []
    with db.read_session() as session:
        first_refresh, second_refresh = session.scalars(
            select(Job).where(Job.kind == JobKind.refresh).order_by(Job.id)
        ).all()
    gap = datetime.fromisoformat(second_refresh.params["not_before"]) - datetime.fromisoformat(
        first_refresh.params["not_before"]
    )
    assert gap.total_seconds() == pytest.approx(3600, abs=0.01)
    assert run(app, second_refresh.id) == JobStatus.succeeded
    result = job(client, engineer, second_refresh.id)["result"]
    newest = result["model_id"]
    assert result["labels"] == 165
    assert result["serving"] is True and result["pruned"] == [refreshed]
    gone = client.get(f"/api/v1/models/{refreshed}/download?format=onnx", headers=engineer.headers)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "model_files_pruned"
    old_card = client.get(f"/api/v1/models/{refreshed}", headers=engineer.headers).json()
    assert old_card["artefacts"]["files_pruned_at"] and old_card["metrics"]["test_accuracy"] is not None
    with db.read_session() as session:
        old, new = session.get(ModelVersion, refreshed), session.get(ModelVersion, newest)
        assert not any(rt.blobs.exists(sha) for sha in (old.head_sha256, old.onnx_sha256, old.weights_sha256))
        assert rt.blobs.exists(new.head_sha256) and rt.blobs.exists(session.get(ModelVersion, champion_id).onnx_sha256)
    predicted = client.post(
        f"/api/v1/projects/{project['id']}/predict",
        files=[("files", ("a.png", pngs[0], "image/png"))],
        headers=engineer.headers,
    ).json()
    assert predicted["model_id"] == newest


def test_a_refreshed_head_worse_than_the_champion_does_not_serve_and_says_why(trained):
    app, client, engineer, annotator = trained.app, trained.client, trained.engineer, trained.annotator
    project, truth, champion_id = trained.project, trained.truth, trained.champion_id
    rt = app.state.runtime
    images = client.get(f"/api/v1/projects/{project['id']}/images?limit=1000", headers=engineer.headers).json()
    labels = client.get(f"/api/v1/projects/{project['id']}/labels?limit=1000", headers=engineer.headers).json()
    train_split = {image["id"] for image in images["items"] if image["split"] == "train"}
    for item in labels["items"]:  # the annotator "corrects" every training label to the next digit
        if item["image_id"] in train_split:
            wrong = str((int(truth[item["image_id"]]) + 1) % 10)
            body = {"image_id": item["image_id"], "label": wrong}
            response = client.post(
                f"/api/v1/projects/{project['id']}/annotations", json=body, headers=annotator.headers
            )
            assert response.status_code == 201, response.text
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == [JobKind.refresh]
    with rt.db.read_session() as session:
        refresh_job = session.scalars(select(Job).where(Job.kind == JobKind.refresh)).one()
    assert run(app, refresh_job.id) == JobStatus.succeeded
    result = job(client, engineer, refresh_job.id)["result"]
    assert result["serving"] is False and "not serving, the champion does" in result["message"]
    card = client.get(f"/api/v1/models/{result['model_id']}", headers=engineer.headers).json()
    decision = card["decision"]
    assert card["status"] == "retired" and decision["promote"] is False and decision["champion_id"] == champion_id
    assert decision["rule"] in ("below the champion", "significantly worse")
    assert decision["candidate_accuracy"] == card["metrics"]["test_accuracy"] < decision["champion_accuracy"]
    assert decision["tolerance"] == 0.005 and 0 <= decision["p_value"] <= 1
    # The champion keeps answering, and the refused head gets no export.
    pngs, _ = digits()
    files = [("files", ("a.png", pngs[0], "image/png"))]
    predicted = client.post(f"/api/v1/projects/{project['id']}/predict", files=files, headers=engineer.headers)
    assert predicted.json()["model_id"] == champion_id
    task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers).json()
    assert task["prelabel"]["model_version"] == f"model-{champion_id}"
    with rt.db.read_session() as session:
        assert session.scalars(select(Job).where(Job.kind == JobKind.export)).all() == []


def test_promote_by_hand_and_roll_back(trained):
    app, client, engineer, project, first = (
        trained.app,
        trained.client,
        trained.engineer,
        trained.project,
        trained.champion_id,
    )
    rt, annotator = app.state.runtime, trained.annotator
    url = f"/api/v1/projects/{project['id']}/settings"
    policy = {"auto_train": True, "auto_refresh": False, "min_new_labels": 10, "growth": 0}
    client.patch(url, json={"settings": {"training": policy}}, headers=trained.admin.headers).raise_for_status()
    label_digits(client, project, annotator, trained.truth, 10)
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == [JobKind.train]
    with rt.db.read_session() as session:
        policy_job = session.scalars(select(Job).where(Job.kind == JobKind.train).order_by(Job.id.desc())).first()
    assert policy_job.params["labeled"] == 160
    label_digits(client, project, annotator, trained.truth, 10)  # while the training waits to start
    assert run(app, policy_job.id) == JobStatus.succeeded
    second = job(client, engineer, policy_job.id)["result"]["model_id"]
    card = client.get(f"/api/v1/models/{second}", headers=engineer.headers).json()
    assert card["snapshot"]["item_count"] == 170
    # Growth counts from the labels the training saw (170), not from when it was asked for (160).
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == []
    client.post(f"/api/v1/models/{second}/promote", json={"reason": "try it"}, headers=engineer.headers)
    back = client.post(f"/api/v1/models/{first}/promote", json={"reason": "rollback"}, headers=engineer.headers)
    assert back.status_code == 200 and back.json()["status"] == "champion"
    assert back.json()["decision"]["promotions"][-1]["reason"] == "rollback"
    models = client.get(f"/api/v1/projects/{project['id']}/models", headers=engineer.headers).json()
    statuses = {m["id"]: m["status"] for m in models}
    assert statuses[first] == "champion" and statuses[second] == "retired"
    assert (
        client.get(f"/api/v1/projects/{project['id']}/models/champion", headers=engineer.headers).json()["id"] == first
    )


@pytest.mark.postgres
def test_a_training_while_one_is_queued_is_the_same_job_and_only_one_runs_at_a_time(app, client, team, admin):
    engineer, _ = team
    project = make_project(client, admin, engineer)
    first = start(client, project, engineer)
    assert start(client, project, engineer)["id"] == first["id"]  # still queued: one follow-up, not two
    rt = app.state.runtime
    from flywheel.jobs.rows import claim_job

    assert claim_job(rt.db, job_id=first["id"], worker="host:1") is not None
    second = start(client, project, engineer)
    assert second["id"] != first["id"]
    assert claim_job(rt.db, job_id=second["id"], worker="host:2") is None  # waits for the running one
    assert job(client, engineer, second["id"])["status"] == "queued"


def test_too_few_labels_or_one_class_fail_with_a_clear_message_and_the_policy_still_triggers(app, client, team, admin):
    engineer, annotator = team
    project, truth = digit_project(client, admin, engineer, annotator, count=120, training={"min_new_labels": 5})
    label_digits(client, project, annotator, truth, 5)
    too_few = start(client, project, engineer)
    assert run(app, too_few["id"]) == JobStatus.failed
    failed = job(client, engineer, too_few["id"])
    assert "too few labels to train" in failed["error"] and "training.min_labels" in failed["error"]
    assert "JobFailed" in failed["traceback"]

    zeros = [i for i, label in truth.items() if label == "0"]
    one_class = make_project(
        client,
        admin,
        engineer,
        annotator,
        labels=["0", "1"],
        settings={"overlap_rate": 0, "gold_rate": 0, "training": {"min_labels": 2}},
    )
    files = [("files", (f"{i}.png", digits()[0][list(truth).index(i)], "image/png")) for i in zeros[:10]]
    uploaded = client.post(f"/api/v1/projects/{one_class['id']}/images", files=files, headers=admin.headers).json()
    ids = [f["image_id"] for f in uploaded["files"]]
    label_digits(client, one_class, annotator, dict.fromkeys(ids, "0"), 10)
    one = start(client, one_class, engineer)
    assert run(app, one["id"]) == JobStatus.failed
    assert "at least two classes" in job(client, engineer, one["id"])["error"]

    url = f"/api/v1/projects/{project['id']}/settings"
    client.patch(url, json={"settings": {"training": {"pretrained_weights": "backbone.pt"}}}, headers=admin.headers)
    label_digits(client, project, annotator, truth, 20)
    no_folder = start(client, project, engineer)
    assert run(app, no_folder["id"]) == JobStatus.failed
    assert "LABELWHEEL_PRETRAINED_DIR is not set" in job(client, engineer, no_folder["id"])["error"]
    client.patch(url, json={"settings": {"training": {"pretrained_weights": None}}}, headers=admin.headers)

    # The policy triggers again once labels have grown, and that training succeeds.
    rt = app.state.runtime
    label_digits(client, project, annotator, truth, 40)
    assert JobKind.train in start_policy_jobs(rt.db, rt.transport, project_id=project["id"])
    with rt.db.read_session() as session:
        policy_job = session.scalars(select(Job).where(Job.project_id == project["id"]).order_by(Job.id.desc())).first()
    assert policy_job.params["trigger"] == "policy" and run(app, policy_job.id) == JobStatus.succeeded


def test_the_policy_trains_when_labels_grow_by_the_larger_of_count_and_share(app, client, team, admin):
    engineer, annotator = team
    project, truth = digit_project(
        client, admin, engineer, annotator, count=200, training={"min_new_labels": 30, "growth": 0.5}
    )
    rt = app.state.runtime
    label_digits(client, project, annotator, truth, 29)
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == []
    label_digits(client, project, annotator, truth, 1)
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == [JobKind.train]
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == []  # counted from the queued one
    label_digits(client, project, annotator, truth, 29)  # 59: needs max(30, 50% of 30) = 30 more
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == []
    label_digits(client, project, annotator, truth, 1)
    assert start_policy_jobs(rt.db, rt.transport, project_id=project["id"]) == [JobKind.train]
    with rt.db.read_session() as session:
        queued = session.scalar(select(func.count()).where(Job.kind == JobKind.train, Job.status == JobStatus.queued))
    assert queued == 1  # the second trigger joined the waiting training


@pytest.mark.postgres
def test_cancel_a_queued_job_and_refuse_to_cancel_a_finished_one(app, client, team, admin):
    engineer, _ = team
    project = make_project(client, admin, engineer)
    queued = start(client, project, engineer)
    cancelled = client.delete(f"/api/v1/jobs/{queued['id']}", headers=engineer.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert run(app, queued["id"]) is None
    again = client.delete(f"/api/v1/jobs/{queued['id']}", headers=engineer.headers)
    assert again.status_code == 409


def test_bad_model_requests(trained):
    app, client, admin, engineer, project = (
        trained.app,
        trained.client,
        trained.admin,
        trained.engineer,
        trained.project,
    )
    untrained = make_project(client, admin, engineer)
    no_model = client.post(
        f"/api/v1/projects/{untrained['id']}/predict",
        files=[("files", ("a.png", img.png(), "image/png"))],
        headers=engineer.headers,
    )
    assert no_model.status_code == 409 and "no model yet" in no_model.json()["error"]["message"]
    corrupt = client.post(
        f"/api/v1/projects/{project['id']}/predict",
        files=[("files", ("bad.jpg", img.truncated_jpeg(), "image/jpeg"))],
        headers=engineer.headers,
    )
    assert corrupt.status_code == 422 and "bad.jpg" in corrupt.json()["error"]["message"]
    unknown = client.post(f"/api/v1/projects/{project['id']}/jobs", json={"kind": "sleep"}, headers=engineer.headers)
    assert unknown.status_code == 422

    model_id = trained.champion_id
    other_engineer = make_user(app, "other", Role.engineer)
    make_project(client, admin, other_engineer)
    for path in (f"/api/v1/models/{model_id}", f"/api/v1/models/{model_id}/download?format=weights"):
        assert client.get(path, headers=other_engineer.headers).status_code == 404
    with app.state.runtime.db.session() as session:
        trained = session.get(ModelVersion, model_id)
        training = ModelVersion(
            project_id=project["id"],
            kind=trained.kind,
            status=ModelStatus.training,
            architecture="small_cnn",
            input_size=32,
            labels=trained.labels,
            hyperparameters={},
            seed=0,
        )
        session.add(training)
        session.flush()
        training_id = training.id
    refused = client.post(f"/api/v1/models/{training_id}/promote", headers=engineer.headers)
    assert refused.status_code == 409


def test_the_hash_split_is_about_a_fifth_of_every_class():
    """The test split comes from each image's hash, which knows nothing of its label: every class gets
    about 20% as labels arrive (checked on all 1,797 digits, 150 to 190 images per class)."""
    import hashlib

    from storage.ingest import split_for
    from storage.models import Split

    pngs, labels = digits()
    in_test = np.array([split_for(hashlib.sha256(p).hexdigest()) == Split.test for p in pngs])
    shares = [in_test[labels == d].mean() for d in range(10)]
    assert 0.19 <= in_test.mean() <= 0.21
    assert all(0.12 <= share <= 0.28 for share in shares), shares
