"""The `labelwheel` command: serve (prints an admin token and the docs URL), users, import, db upgrade."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from storage.db import Database
from storage.models import Image
from tests import imagefactory as img
from tests.test_blobs import free_port

LABELWHEEL = str(Path(sys.executable).parent / "labelwheel")


def run(args, env, **kwargs):
    return subprocess.run([LABELWHEEL, *args], env=env, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture
def env(tmp_path, database_url):
    return {**os.environ, "LABELWHEEL_DATA_DIR": str(tmp_path / "data"), "LABELWHEEL_DATABASE_URL": database_url}


def start_server(env, port):
    """`labelwheel serve` without its job worker (tests/test_worker.py covers that), unless ``env`` asks."""
    process = subprocess.Popen(
        [LABELWHEEL, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={"LABELWHEEL_EMBEDDED_WORKER": "false", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if line.startswith(("admin token", "an admin exists")) or not line:
            break
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return process, base, "".join(lines)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


def stop(process):
    process.terminate()
    process.wait(timeout=20)


def test_serve_prints_a_working_admin_token_once_and_the_docs_url(env):
    env = {**env, "LABELWHEEL_DATABASE_URL": ""}  # the embedded default
    port = free_port()
    process, base, output = start_server(env, port)
    try:
        assert f"http://127.0.0.1:{port}/docs" in output
        token = re.search(r"admin token \(shown once, keep it\): (\S+)", output).group(1)
        me = httpx.get(f"{base}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["role"] == "admin"
        assert httpx.get(f"{base}/docs").status_code == 200
    finally:
        stop(process)
    process, _, output = start_server(env, port)
    stop(process)
    assert "an admin exists already" in output


def test_the_admin_token_can_come_from_the_environment(env):
    token = "a-long-automation-token-0123456789"
    process, base, output = start_server({**env, "LABELWHEEL_ADMIN_TOKEN": token}, free_port())
    try:
        assert "LABELWHEEL_ADMIN_TOKEN" in output
        me = httpx.get(f"{base}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["role"] == "admin"
    finally:
        stop(process)


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


def test_serve_with_several_worker_processes(env):
    token = "a-long-automation-token-0123456789"
    process, base, output = start_server(
        {**env, "LABELWHEEL_ADMIN_TOKEN": token, "LABELWHEEL_WORKERS": "2"}, free_port()
    )
    try:
        assert "workers: 2" in output
        headers = {"Authorization": f"Bearer {token}"}
        for i in range(6):  # requests spread over both processes, which share the database
            created = httpx.post(
                f"{base}/api/v1/projects", json={"name": f"p{i}", "labels": ["a", "b"]}, headers=headers
            )
            assert created.status_code == 201
        assert len(httpx.get(f"{base}/api/v1/projects", headers=headers).json()) == 6
    finally:
        stop(process)
