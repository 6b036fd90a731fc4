"""Stored quality reports as a large project sees them (``quality_sync_labels`` 0: never computed in the request):
the first request answers 202 and names the job; the job stores both reports; newer labels show as such and the
policy check starts one debounced recompute; an exclusion shows at once and starts a recompute; a gold answer
marks the reports outdated; schedules and POST /jobs start the same job."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from annotation.consensus import update_project_consensus
from annotation.quality_reports import card_human_reference
from annotation.reports import human_reference
from flywheel.quality import start_quality_if_due
from storage.models import Job, JobKind, JobStatus, QualityReport, Role
from storage.settings import Settings, load_settings
from tests.factories import make_project, make_user
from tests.jobs import run
from tests.test_quality import Annotator, api, label_until_done, upload


@pytest.fixture
def settings(tmp_path, database_url: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=database_url, quality_sync_labels=0)


@pytest.mark.postgres  # the upsert of a report differs by dialect
def test_a_large_projects_quality_page_reads_stored_reports_kept_fresh_by_a_job(client, app, admin, engineer):
    rt = app.state.runtime
    team = [make_user(app, name, Role.annotator) for name in ("ann", "bea")]
    project = make_project(
        client, admin, engineer, *team, settings={"overlap_rate": 1.0, "overlap_k": 2, "gold_rate": 0.0}
    )
    images = upload(client, admin, project, 4)
    label_until_done(client, project, [Annotator(a) for a in team], dict.fromkeys(images, "cat"))

    first = client.get(api(project, "/agreement"), headers=engineer.headers)
    assert first.status_code == 202 and first.json()["status"] == "computing"
    job_id = first.json()["job_id"]
    assert client.get(api(project, "/annotators"), headers=engineer.headers).json()["job_id"] == job_id  # one job
    assert run(app, job_id) == JobStatus.succeeded

    agreement = client.get(api(project, "/agreement"), headers=engineer.headers).json()
    assert agreement["items"] == 4 and agreement["percent_agreement"]["value"] == 1.0
    report = agreement["report"]
    assert (report["labels"], report["newer_labels"], report["outdated"], report["recompute_job_id"]) == (8, 0, 0, None)
    cards = client.get(api(project, "/annotators"), headers=engineer.headers).json()
    assert [c["labels"] for c in cards["annotators"]] == [4, 4] and cards["report"]["labels"] == 8
    with rt.db.read_session() as session:  # a model card reads the stored human reference while it is current
        stored = card_human_reference(session, project_id=project["id"])
        assert stored == agreement["human_reference"] == human_reference(session, project["id"])

    # A new label: the stored figures stay, marked as behind; the policy check starts one recompute, debounced.
    [extra] = upload(client, admin, project, 1, start=50)
    label_until_done(client, project, [Annotator(team[0])], {extra: "dog"})
    behind = client.get(api(project, "/agreement"), headers=engineer.headers).json()
    assert behind["items"] == 4 and behind["report"]["newer_labels"] and behind["report"]["outdated"]
    recompute = start_quality_if_due(rt.db, rt.transport, project_id=project["id"])
    assert recompute is not None and start_quality_if_due(rt.db, rt.transport, project_id=project["id"]) is None
    with rt.db.read_session() as session:
        job = session.get_one(Job, recompute)
        assert (job.kind, job.params["trigger"]) == (JobKind.quality_report, "labels")
    assert (
        client.get(api(project, "/annotators"), headers=engineer.headers).json()["report"]["recompute_job_id"]
        == recompute
    )
    assert run(app, recompute) == JobStatus.succeeded
    assert client.get(api(project, "/annotators"), headers=engineer.headers).json()["report"]["labels"] == 9

    # An exclusion shows at once, and its recompute (started by the request) refits without them.
    excluded = client.post(
        api(project, f"/annotators/{team[1].id}/exclusion"), json={"reason": "test"}, headers=admin.headers
    )
    assert excluded.status_code == 201
    cards = client.get(api(project, "/annotators"), headers=engineer.headers).json()
    bea = next(c for c in cards["annotators"] if c["annotator_id"] == team[1].id)
    assert bea["excluded"] and bea["exclusion"]["reason"] == "test" and cards["report"]["outdated"]
    agreement = client.get(api(project, "/agreement"), headers=engineer.headers).json()
    assert agreement["excluded_annotators"] == [team[1].id]
    assert [a["id"] for a in agreement["annotators"]] == [team[0].id]
    pending = agreement["report"]["recompute_job_id"]
    assert pending is not None and run(app, pending) == JobStatus.succeeded
    agreement = client.get(api(project, "/agreement"), headers=engineer.headers).json()
    assert agreement["reason"].startswith("needs two annotators") and not agreement["report"]["outdated"]
    restored = client.delete(api(project, f"/annotators/{team[1].id}/exclusion"), headers=admin.headers)
    assert restored.status_code == 200
    cards = client.get(api(project, "/annotators"), headers=engineer.headers).json()
    assert not next(c for c in cards["annotators"] if c["annotator_id"] == team[1].id)["excluded"]
    assert run(app, cards["report"]["recompute_job_id"]) == JobStatus.succeeded

    # Resolving an image with a gold answer adds no label, yet the reports are outdated and a recompute starts.
    gold = client.put(api(project, "/gold"), json={"image_id": images[0], "label": "cat"}, headers=admin.headers)
    assert gold.status_code == 200
    report = client.get(api(project, "/annotators"), headers=engineer.headers).json()["report"]
    assert report["outdated"] and not report["newer_labels"] and report["recompute_job_id"] is not None
    assert run(app, report["recompute_job_id"]) == JobStatus.succeeded
    cards = client.get(api(project, "/annotators"), headers=engineer.headers).json()
    assert {c["gold_answered"] for c in cards["annotators"]} == {1} and not cards["report"]["outdated"]

    # A training's consensus refit (no new label either) outdates them too.
    with rt.db.session() as session:
        update_project_consensus(session, project["id"])
    assert client.get(api(project, "/agreement"), headers=engineer.headers).json()["report"]["outdated"]

    # On request and on a schedule, like any job.
    started = client.post(api(project, "/jobs"), json={"kind": "quality_report"}, headers=engineer.headers)
    assert started.status_code == 201, started.text
    scheduled = client.put(
        api(project, "/schedules"), json={"quality_report": "*/15 * * * *"}, headers=engineer.headers
    )
    assert scheduled.status_code == 200 and scheduled.json()[0]["kind"] == "quality_report"
    with rt.db.read_session() as session:
        assert len(session.scalars(select(QualityReport).where(QualityReport.project_id == project["id"])).all()) == 2
