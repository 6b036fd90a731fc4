"""The real loop on the digits: ``labelwheel serve`` (API + worker) driven over HTTP in rounds of labels.

Per seed, 500 digits are held out and never uploaded; the rest go to two projects that differ only in
their mining strategy (the default ``margin_kcenter``, and ``random``), each in its own server (SQLite,
local files, the embedded worker, one torch thread). Each round an annotator labels the next 50
images that ``tasks/next`` serves, with their true digit; then a training is asked for and the
flywheel runs as it does for users: the promotion gate, the new champion's embeddings and mining
pass, refreshed heads (held to the champion's bar). After the round the serving model is scored
through ``/predict`` on the held-out digits.

Prints both curves per seed, the largest drop between consecutive rounds, the final serving model
against the best one seen, and labels saved (the default strategy reaching random's accuracy at the
last round, with how many labels). Aims (issue 19): no drop over 1 point between rounds, the final
model within 0.5 point of the best, and at least 50% fewer labels than random.

Run ``./dev bench learning_curve`` (``--seeds N``, ``--rounds N``, ``--batch N``).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from service.launcher import running_server

ADMIN = {"Authorization": "Bearer bench-curve-admin-token-0123456789"}
LABELS = [str(d) for d in range(10)]
HELD_OUT = 500
STRATEGIES = ("margin_kcenter", "random")


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray((pixels * 16).clip(0, 255).astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def split(seed: int) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]]]:
    """The distinct digits as PNG files: (pool to upload, held-out set), stratified by digit."""
    data = load_digits()
    files, seen = [], set()
    for pixels, label in zip(data.images, data.target, strict=True):
        file = png(pixels)
        if file not in seen:
            seen.add(file)
            files.append((file, str(label)))
    pool, held = train_test_split(files, test_size=HELD_OUT, stratify=[f[1] for f in files], random_state=seed)
    return pool, held


def wait_idle(client: httpx.Client, project_id: int, headers: dict[str, str], timeout: float = 600) -> None:
    """Until no job of the project is queued or running (training, embeddings, mining, refreshes, exports)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = client.get(f"/api/v1/projects/{project_id}/jobs", headers=headers).json()
        if all(j["status"] not in ("queued", "running") for j in jobs):
            return
        time.sleep(0.5)
    raise TimeoutError(f"project {project_id}: jobs still running after {timeout:.0f} s")


def campaign(strategy: str, seed: int, rounds: int, batch: int, folder: Path) -> list[dict]:
    pool, held = split(seed)
    truth: dict[int, str] = {}
    folder.mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LABELWHEEL_")},
        "LABELWHEEL_DATA_DIR": str(folder / "data"),
        "LABELWHEEL_ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer "),
        "LABELWHEEL_LOG_LEVEL": "WARNING",
    }
    rows = []
    with running_server(env, folder / "server.log") as (_, base), httpx.Client(base_url=base, timeout=120) as client:

        def user(name: str, role: str) -> tuple[int, dict[str, str]]:
            made = client.post("/api/v1/users", json={"name": name, "role": role}, headers=ADMIN).json()
            return made["id"], {"Authorization": f"Bearer {made['token']}"}

        (engineer_id, engineer), (annotator_id, annotator) = user("eng", "engineer"), user("ann", "annotator")
        settings = {
            "overlap_rate": 0.0,
            "gold_rate": 0.0,
            "training": {"auto_train": False, "seed": seed, "debounce_seconds": 0},
            "mining": {"strategy": strategy, "batch_size": batch},
        }
        project = client.post(
            "/api/v1/projects", json={"name": "digits", "labels": LABELS, "settings": settings}, headers=ADMIN
        ).json()
        pid = project["id"]
        for uid in (engineer_id, annotator_id):
            client.post(f"/api/v1/projects/{pid}/members", json={"user_id": uid}, headers=ADMIN).raise_for_status()
        for start in range(0, len(pool), 200):
            chunk = pool[start : start + 200]
            files = [("files", (f"{start + k}.png", data, "image/png")) for k, (data, _) in enumerate(chunk)]
            answer = client.post(f"/api/v1/projects/{pid}/images", files=files, headers=ADMIN).json()
            truth |= {f["image_id"]: label for f, (_, label) in zip(answer["files"], chunk, strict=True)}
        labeled = 0
        for round_ in range(1, rounds + 1):
            for _ in range(batch):
                task = client.get(f"/api/v1/projects/{pid}/tasks/next", headers=annotator)
                if task.status_code == 204:
                    break
                image_id = task.json()["image_id"]
                body = {"image_id": image_id, "label": truth[image_id]}
                client.post(f"/api/v1/projects/{pid}/annotations", json=body, headers=annotator).raise_for_status()
                labeled += 1
            wait_idle(client, pid, engineer)  # the refreshes the labels set off
            job = client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "train"}, headers=engineer).json()
            wait_idle(client, pid, engineer)  # the training, then the champion's embeddings and mining pass
            done = client.get(f"/api/v1/jobs/{job['id']}", headers=engineer).json()
            correct, serving = 0, None
            for start in range(0, len(held), 100):
                chunk = held[start : start + 100]
                files = [("files", (f"h{start + k}.png", data, "image/png")) for k, (data, _) in enumerate(chunk)]
                answer = client.post(f"/api/v1/projects/{pid}/predict", files=files, headers=engineer).json()
                serving = answer["model_id"]
                correct += sum(p["label"] == label for p, (_, label) in zip(answer["predictions"], chunk, strict=True))
            decision = (done.get("result") or {}).get("message", done.get("error"))
            rows.append({"round": round_, "labels": labeled, "accuracy": correct / len(held), "serving": serving})
            print(
                f"  seed {seed} {strategy:14s} {labeled:4d} labels: held-out {correct / len(held):.3f} "
                f"(serving model {serving}; {decision})",
                flush=True,
            )
    return rows


def largest_drop(rows: list[dict]) -> float:
    """The largest fall in accuracy from one round to the next (0 when the curve never falls)."""
    return max([0.0] + [a["accuracy"] - b["accuracy"] for a, b in zip(rows, rows[1:], strict=False)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; the two strategies' servers run side by side")
    curves: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            with ThreadPoolExecutor(len(STRATEGIES)) as pool:
                futures = {
                    s: pool.submit(campaign, s, seed, args.rounds, args.batch, Path(tmp) / f"{s}-{seed}")
                    for s in STRATEGIES
                }
                for s, future in futures.items():
                    curves[s, seed] = future.result()
    print("\nheld-out accuracy of the serving model after each round")
    labels = [r["labels"] for r in curves[STRATEGIES[0], 0]]
    print("labels            " + " ".join(f"{n:6d}" for n in labels))
    for (strategy, seed), rows in curves.items():
        print(f"{strategy:14s} s{seed} " + " ".join(f"{r['accuracy']:6.3f}" for r in rows))
    print()
    drops, gaps, saved = [], [], []
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            rows = curves[strategy, seed]
            drop, gap = largest_drop(rows), max(r["accuracy"] for r in rows) - rows[-1]["accuracy"]
            drops.append(drop)
            gaps.append(gap)
            print(
                f"seed {seed} {strategy:14s}: largest drop between rounds {drop * 100:.1f} points, "
                f"final {rows[-1]['accuracy']:.3f} vs best {max(r['accuracy'] for r in rows):.3f}"
            )
        target = curves["random", seed][-1]
        reached = next((r for r in curves["margin_kcenter", seed] if r["accuracy"] >= target["accuracy"]), None)
        if reached is not None:
            saved.append(1 - reached["labels"] / target["labels"])
            print(
                f"seed {seed}: margin_kcenter reaches random's {target['labels']}-label accuracy "
                f"{target['accuracy']:.3f} with {reached['labels']} labels ({saved[-1]:.0%} fewer)"
            )
        else:
            saved.append(0.0)
            print(f"seed {seed}: margin_kcenter never reaches random's {target['accuracy']:.3f}")
    print(
        f"\nlargest drop {max(drops) * 100:.1f} points (aim <= 1), final vs best at most {max(gaps) * 100:.1f} "
        f"points (aim <= 0.5), labels saved median {statistics.median(saved):.0%} (aim >= 50%)"
    )


if __name__ == "__main__":
    main()
