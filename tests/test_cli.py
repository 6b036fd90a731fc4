"""The `labelwheel` command: serve (an admin token, its URL once it answers, a port in use), users and members,
mining, import, db upgrade, and what a command says when a name is not found."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.cli_remote import REMOTE_COMMANDS
from service.launcher import LABELWHEEL, free_port, running_server
from storage.db import Database
from storage.models import Image
from storage.settings import get_settings
from storage.users import authenticate, ensure_admin
from tests import imagefactory as img
from tests.factories import make_project


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
def test_serve_prints_a_working_admin_token_once_then_its_url_once_it_answers(env, tmp_path):
    env = {**env, "LABELWHEEL_DATABASE_URL": "", "LABELWHEEL_EMBEDDED_WORKER": "false"}  # the embedded default
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [LABELWHEEL, "serve", "--port", str(port)]
    with subprocess.Popen(serve, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as server:
        try:
            printed = []
            for line in server.stdout:
                printed.append(line)
                if line.startswith("labelwheel on "):
                    break
            # The moment the URL is printed, it answers (no retry here).
            assert printed[-1].strip() == f"labelwheel on {base}  (API docs: {base}/docs)", printed
            assert httpx.get(f"{base}/docs").status_code == 200
            token = re.search(r"admin token \(shown once, keep it\): (\S+)", "".join(printed)).group(1)
            me = httpx.get(f"{base}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
            assert me.json()["role"] == "admin"
        finally:
            server.terminate()
            server.wait(timeout=30)
    with serving(env, tmp_path / "second.log") as (_, output):
        assert "an admin exists already" in output


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_2_before_starting_anything(env, tmp_path):
    env = {**env, "LABELWHEEL_DATABASE_URL": "", "LABELWHEEL_EMBEDDED_WORKER": "true"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["serve", "--port", str(port)], env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"cannot listen on 127.0.0.1:{port}: Address already in use; stop what holds it, or choose another with "
        "--port or LABELWHEEL_PORT"
    ]
    assert not Path(env["LABELWHEEL_DATA_DIR"]).exists()  # no database made, no job worker started


def test_mine_for_a_missing_project_says_where_it_looked_before_importing_torch(env, tmp_path):
    env = {**env, "LABELWHEEL_DATABASE_URL": ""}
    mine = [sys.executable, "-X", "importtime", "-m", "service.cli", "mine", "--project", "missing"]
    result = subprocess.run(mine, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    said = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    data_dir = Path(env["LABELWHEEL_DATA_DIR"]).resolve()
    assert said == [f"no project named 'missing' in the data directory {data_dir} (LABELWHEEL_DATA_DIR)"]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "sqlalchemy" in imported and "torch" not in imported


def cli(args: list[str], env: dict[str, str]):
    """Run a command in this process (no interpreter start-up), with ``env`` read afresh as settings."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli_app, args, env=env)
    finally:
        get_settings.cache_clear()


def test_users_and_project_members_from_the_command_line(client, admin, database_url, tmp_path):
    project = make_project(client, admin, name="pets")
    env = {"LABELWHEEL_DATA_DIR": str(tmp_path / "unused"), "LABELWHEEL_DATABASE_URL": database_url}
    created = cli(["users", "create", "alice", "--role", "annotator", "--project", "pets"], env)
    assert created.exit_code == 0, created.output
    alice = {"Authorization": f"Bearer {created.stdout.strip()}"}
    assert client.get(f"/api/v1/projects/{project['id']}", headers=alice).status_code == 200
    assert cli(["users", "create", "bob", "--role", "engineer"], env).exit_code == 0
    for _ in range(2):  # adding a member again changes nothing
        added = cli(["projects", "members", "add", "bob", "--project", "pets"], env)
        assert added.exit_code == 0, added.output
    members = cli(["projects", "members", "list", "--project", "pets"], env).stdout
    assert [line.split("\t")[1:] for line in members.splitlines()] == [["alice", "annotator"], ["bob", "engineer"]]

    where = f"in the database {database_url} (LABELWHEEL_DATABASE_URL)"
    ghost = cli(["projects", "members", "add", "alice", "ghost", "--project", "pets"], env)
    assert ghost.exit_code == 1 and ghost.stderr.strip() == f"no user named 'ghost' {where}"
    nowhere = cli(["users", "create", "carol", "--project", "pets", "--project", "nope"], env)
    assert nowhere.exit_code == 1 and nowhere.stderr.strip() == f"no project named 'nope' {where}"
    users = cli(["users", "list"], env).stdout
    assert [line.split("\t")[1:] for line in users.splitlines()] == [
        [admin.name, "admin"],
        ["alice", "annotator"],
        ["bob", "engineer"],
    ]  # no carol: a wrong project name creates no user


def test_every_command_that_takes_a_project_says_which_data_directory_it_looked_in(tmp_path):
    data_dir = tmp_path / "elsewhere"
    (tmp_path / "folder").mkdir()
    (tmp_path / "export.json").write_text("[]")
    commands = {
        "mine": ["mine"],
        "import": ["import", str(tmp_path / "folder")],
        "export": ["export", "--out", str(tmp_path / "out.csv")],
        "import-labelstudio": ["import-labelstudio", str(tmp_path / "export.json")],
        "users create": ["users", "create", "dave"],
        "projects members add": ["projects", "members", "add", "dave"],
        "projects members list": ["projects", "members", "list"],
        "labelstudio status": ["labelstudio", "status"],
        "labelstudio push": ["labelstudio", "push"],
    }
    # `labelstudio connect` creates the project it is given when there is none.
    assert set(commands) | {"labelstudio connect"} == set(commands_with_a_project_option())
    env = {"LABELWHEEL_DATA_DIR": str(data_dir), "LABELWHEEL_DATABASE_URL": ""}  # the embedded default
    for args in commands.values():
        result = cli([*args, "--project", "nope"], env)
        assert result.exit_code == 1, (args, result.output)
        assert (
            result.stderr.strip() == f"no project named 'nope' in the data directory {data_dir} (LABELWHEEL_DATA_DIR)"
        )


def commands_with_a_project_option(group=None, prefix: str = "") -> list[str]:
    """The commands that look a project up in this machine's database (remote ones: tests/test_client.py)."""
    group = group or typer.main.get_group(cli_app)
    found = []
    for name, command in group.commands.items():
        if not prefix and name in REMOTE_COMMANDS:
            continue
        if hasattr(command, "commands"):
            found += commands_with_a_project_option(command, f"{prefix}{name} ")
        elif any(param.name == "project" for param in command.params):
            found.append(f"{prefix}{name}")
    return found


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
    # Two API processes and no job worker (serve with its worker: tests/test_worker.py).
    env = {**env, "LABELWHEEL_ADMIN_TOKEN": token, "LABELWHEEL_WORKERS": "2", "LABELWHEEL_EMBEDDED_WORKER": "false"}
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


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_api_replicas_starting_together_agree_on_the_admin_of_the_environment(database_url):
    """Two replicas with LABELWHEEL_ADMIN_TOKEN start at once: the one whose insert of the admin meets the other's
    row takes that row over instead of failing its start."""
    token = "replica-admin-token-0123456789"
    first, second = Database(database_url), Database(database_url)
    inserted, answers = threading.Event(), []

    def starting_second() -> None:
        inserted.wait()
        with second.session() as session:  # sees no admin yet; its insert waits for the first's transaction
            answers.append(ensure_admin(session, token=token))

    thread = threading.Thread(target=starting_second)
    thread.start()
    try:
        with first.session() as session:
            assert ensure_admin(session, token=token) is None
            inserted.set()
            time.sleep(0.5)
        thread.join(timeout=30)
        with first.read_session() as session:
            assert authenticate(session, token=token).role.value == "admin"
    finally:
        first.dispose()
        second.dispose()
    assert answers == [None], "the second replica failed to start"
