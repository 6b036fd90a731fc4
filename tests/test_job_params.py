"""Job params through the HTTP API: each kind takes only its own, within bounds; anything else is a 422
and stores nothing."""

from __future__ import annotations

import json

from flywheel.jobs.params import PARAMS
from tests.factories import make_project


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


BAD = {
    "an unknown key": ("train", {"epochs": 5}),
    "900 levels of nesting": ("train", nested(900)),
    "a 5 MB string": ("label_quality", {"filter_by": "x" * 5_000_000}),
    "too many folds": ("label_quality", {"folds": 21}),
    "one fold": ("label_quality", {"folds": 1}),
    "no epochs": ("label_quality", {"epochs": 0}),
    "too many epochs": ("label_quality", {"epochs": 1001}),
    "folds as text": ("label_quality", {"folds": "5"}),
    "folds as a fraction": ("label_quality", {"folds": 5.5}),
    "folds as a boolean": ("label_quality", {"folds": True}),
    "an unknown filter": ("label_quality", {"filter_by": "guess"}),
    "the flywheel's own keys": ("mine", {"trigger": "schedule"}),
    "params that are no object": ("refresh", ["folds", 3]),
}


def test_bad_params_are_a_422_naming_the_param_and_nothing_is_stored(client, admin, engineer):
    project = make_project(client, admin, engineer)
    url = f"/api/v1/projects/{project['id']}/jobs"
    headers = {**engineer.headers, "Content-Type": "application/json"}
    answers = {}
    for case, (kind, params) in BAD.items():
        response = client.post(url, content=json.dumps({"kind": kind, "params": params}), headers=headers)
        error = response.json()["error"]
        assert len(response.content) < 5000, case  # a huge value is not echoed back
        answers[case] = (response.status_code, error["code"], "params" in error["message"])
    assert answers == dict.fromkeys(BAD, (422, "invalid_request", True))
    folds = client.post(url, json={"kind": "label_quality", "params": {"folds": 21}}, headers=engineer.headers)
    assert "params.folds: Input should be less than or equal to 20" in folds.json()["error"]["message"]
    export = client.post(url, json={"kind": "export"}, headers=engineer.headers)
    assert export.status_code == 422 and "label_quality" in export.json()["error"]["message"]
    listed = client.get(url, headers=engineer.headers)
    assert listed.status_code == 200 and listed.json() == []


def test_every_kind_a_person_may_start_is_accepted_with_its_params_recorded(client, admin, engineer):
    project = make_project(client, admin, engineer)
    url = f"/api/v1/projects/{project['id']}/jobs"
    required = {"quantize": {"model_id": 1}}  # which model to quantize has no default
    for kind in PARAMS:
        created = client.post(url, json={"kind": kind, "params": required.get(kind, {})}, headers=engineer.headers)
        assert created.status_code == 201, created.text
        recorded = {k: v for k, v in created.json()["params"].items() if k != "labeled"}
        assert recorded == {"trigger": "manual", **required.get(kind, {})}
    body = {"kind": "label_quality", "params": {"folds": 3, "epochs": 30, "filter_by": "both"}}
    created = client.post(url, json=body, headers=engineer.headers)
    assert created.json()["params"] == {"folds": 3, "epochs": 30, "filter_by": "both", "trigger": "manual"}


def test_the_api_schema_documents_each_kinds_params(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    kinds = {
        name: s["properties"]["kind"].get("const") for name, s in schemas.items() if "kind" in s.get("properties", {})
    }
    requests = {kind: schemas[name] for name, kind in kinds.items() if kind is not None}
    params = {kind: schemas[r["properties"]["params"]["$ref"].rsplit("/", 1)[1]] for kind, r in requests.items()}
    assert set(params) == set(PARAMS) and all(p["additionalProperties"] is False for p in params.values())
    folds = params["label_quality"]["properties"]["folds"]["anyOf"][0]  # or null: the task's default
    assert (folds["minimum"], folds["maximum"]) == (2, 20)
