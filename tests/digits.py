"""scikit-learn's digits as real PNG files, and a project labeled through the HTTP API."""

from __future__ import annotations

import functools
import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits

from tests.factories import Account, make_project

DIGIT_LABELS = [str(d) for d in range(10)]
# Quick trainings for tests: a few epochs at 16 px, a refresh on every label, training after 40 labels.
# One pass over the labels per epoch (the default repeats small sets, for accuracy, at a cost in time).
FAST_TRAINING = {
    "input_size": 16,
    "epochs": 4,
    "patience": 4,
    # A few dozen labels still get 32 steps an epoch: one pass each left the model at chance, which only a
    # baseline weaker than the test split's most frequent class let through.
    "min_epoch_images": 512,
    "min_new_labels": 40,
    "min_labels": 10,
    "debounce_seconds": 0,
}


@functools.cache
def digits() -> tuple[list[bytes], np.ndarray]:
    """1,797 distinct 8x8 grey PNGs and their true digits."""
    data = load_digits()
    pngs, labels, seen = [], [], set()
    for pixels, label in zip(data.images, data.target, strict=True):
        out = io.BytesIO()
        Image.fromarray((pixels * 16).clip(0, 255).astype(np.uint8), mode="L").save(out, format="PNG")
        if out.getvalue() not in seen:  # the store deduplicates identical files; keep the ids one-to-one
            seen.add(out.getvalue())
            pngs.append(out.getvalue())
            labels.append(int(label))
    return pngs, np.array(labels)


def digit_project(client: TestClient, admin: Account, *members: Account, count: int, training: dict | None = None):
    """A digits project with ``count`` uploaded images; returns (project, {image_id: true label})."""
    settings = {"overlap_rate": 0.0, "gold_rate": 0.0, "training": {**FAST_TRAINING, **(training or {})}}
    project = make_project(client, admin, *members, labels=DIGIT_LABELS, settings=settings)
    pngs, labels = digits()
    truth: dict[int, str] = {}
    for start in range(0, count, 200):
        files = [("files", (f"d{i}.png", pngs[i], "image/png")) for i in range(start, min(count, start + 200))]
        response = client.post(f"/api/v1/projects/{project['id']}/images", files=files, headers=admin.headers)
        assert response.status_code == 201, response.text
        for offset, result in enumerate(response.json()["files"]):
            truth[result["image_id"]] = str(labels[start + offset])
    return project, truth


def label_digits(client, project: dict, annotator: Account, truth: dict[int, str], count: int, *, wrong=()) -> int:
    """The annotator labels ``count`` served images with their true digit (a wrong one for ids in ``wrong``)."""
    done = 0
    while done < count:
        task = client.get(f"/api/v1/projects/{project['id']}/tasks/next", headers=annotator.headers)
        if task.status_code == 204:
            break
        image_id = task.json()["image_id"]
        label = truth[image_id] if image_id not in wrong else str((int(truth[image_id]) + 1) % 10)
        response = client.post(
            f"/api/v1/projects/{project['id']}/annotations",
            json={"image_id": image_id, "label": label},
            headers=annotator.headers,
        )
        assert response.status_code == 201, response.text
        done += 1
    return done
