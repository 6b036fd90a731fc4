"""The `labelwheel` command: serve (prints an admin token and the docs URL), users, import, db upgrade."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from service.launcher import LABELWHEEL, running_server
from storage.db import Database
from storage.models import Image
from tests import imagefactory as img


def run(args, env, **kwargs):
    return subprocess.run([LABELWHEEL, *args], env=env, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture
def env(tmp_path, database_url):
    return {**os.environ, "LABELWHEEL_DATA_DIR": str(tmp_path / "data"), "LABELWHEEL_DATABASE_URL": database_url}


@contextmanager
def serving(env, log_path: Path) -> Iterator[tuple[str, str]]:
    """`labelwheel serve` without its job worker (tests/test_worker.py covers that), unless ``env`` asks;
    yields its base URL and what it printed before it answered."""
    with running_server({"LABELWHEEL_EMBEDDED_WORKER": "false", **env}, log_path) as (_, base):
        yield base, log_path.read_text()


@pytest.mark.slow
def test_serve_prints_a_working_admin_token_once_and_the_docs_url(env, tmp_path):
    env = {**env, "LABELWHEEL_DATABASE_URL": ""}  # the embedded default
    with serving(env, tmp_path / "first.log") as (base, output):
        assert f"{base}/docs" in output
        token = re.search(r"admin token \(shown once, keep it\): (\S+)", output).group(1)
        me = httpx.get(f"{base}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["role"] == "admin"
        assert httpx.get(f"{base}/docs").status_code == 200
    with serving(env, tmp_path / "second.log") as (_, output):
        assert "an admin exists already" in output


@pytest.mark.slow
def test_users_create_prints_a_token_and_rotate_replaces_it(env):
    assert run(["db", "upgrade"], env).returncode == 0
    created = run(["users", "create", "carol", "--role", "engineer"], env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("lw_")
    again = run(["users", "create", "carol", "--role", "engineer"], env)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad_role = run(["users", "create", "dave", "--role", "owner"], env)
    assert bad_role.returncode == 2 and "unknown role" in bad_role.stderr
    rotated = run(["users", "rotate-token", "carol"], env)
    assert rotated.returncode == 0 and rotated.stdout.strip() not in {"", token}


@pytest.mark.slow
def test_import_a_folder_twice_adds_nothing_the_second_time(env, tmp_path, database_url):
    folder = tmp_path / "photos"
    (folder / "cats" / "deep").mkdir(parents=True)
    (folder / "dogs").mkdir()
    for i in range(5):
        (folder / "cats" / f"{i}.png").write_bytes(img.png(color=(i, 0, 0)))
    (folder / "cats" / "deep" / "x.jpg").write_bytes(img.encoded("JPEG"))
    (folder / "dogs" / "broken.png").write_bytes(b"not a png")
    assert run(["db", "upgrade"], env).returncode == 0
    token = run(["users", "create", "boss", "--role", "admin"], env).stdout.strip()
    missing = run(["import", str(folder), "--project", "pets"], env)
    assert missing.returncode == 1 and "no project named 'pets'" in missing.stderr
    from service.app import create_app
    from storage.settings import load_settings

    app = create_app(load_settings(data_dir=env["LABELWHEEL_DATA_DIR"], database_url=database_url))
    from fastapi.testclient import TestClient

    TestClient(app).post(
        "/api/v1/projects",
        json={"name": "pets", "labels": ["cat", "dog"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    first = run(["import", str(folder), "--project", "pets"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "6 accepted, 0 duplicate, 1 rejected"
    assert "dogs/broken.png" in first.stderr
    second = run(["import", str(folder), "--project", "pets"], env)
    assert second.stdout.strip() == "0 accepted, 6 duplicate, 1 rejected"
    db = Database(database_url)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 6
        names = set(session.scalars(select(Image.original_name)))
    db.dispose()
    app.state.runtime.db.dispose()
    assert "cats/deep/x.jpg" in names


@pytest.mark.slow
def test_serve_with_several_worker_processes_and_the_admin_token_from_the_environment(env, tmp_path):
    token = "a-long-automation-token-0123456789"
    env = {**env, "LABELWHEEL_ADMIN_TOKEN": token, "LABELWHEEL_WORKERS": "2"}
    with serving(env, tmp_path / "serve.log") as (base, output):
        assert "workers: 2" in output and "LABELWHEEL_ADMIN_TOKEN" in output
        headers = {"Authorization": f"Bearer {token}"}
        me = httpx.get(f"{base}/api/v1/users/me", headers=headers)
        assert me.status_code == 200 and me.json()["role"] == "admin"
        for i in range(6):  # requests spread over both processes, which share the database
            created = httpx.post(
                f"{base}/api/v1/projects", json={"name": f"p{i}", "labels": ["a", "b"]}, headers=headers
            )
            assert created.status_code == 201
        assert len(httpx.get(f"{base}/api/v1/projects", headers=headers).json()) == 6
