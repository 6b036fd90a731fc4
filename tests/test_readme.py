"""The README tells the truth: its "First 10 minutes" runs as written against a real server, and it lists
every command, job kind (with its lane) and setting there is."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from flywheel.jobs.transport import lane_for
from service.cli import app
from service.launcher import free_port
from storage.models import JobKind
from storage.settings import ENV_PREFIX, Settings
from tests.conftest import unavailable

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def command_paths(group, prefix: str = "") -> list[str]:
    """``users create``, ``db upgrade``, ...: the paths to every visible command under a (typer's own) click group."""
    paths = []
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        path = f"{prefix}{name}"
        paths.extend(command_paths(command, f"{path} ") if hasattr(command, "commands") else [path])
    return paths


def test_every_command_is_in_the_readme():
    paths = command_paths(typer.main.get_group(app))
    assert {"serve", "users create", "projects members add", "projects members list"} <= set(paths)
    assert [p for p in paths if not re.search(rf"`labelwheel {p}[ `]", README)] == []


def test_every_job_kind_is_in_the_readme_with_its_lane():
    rows = dict(re.findall(r"^\| `(\w+)` \| (fast|slow) \|", README, flags=re.MULTILINE))
    assert rows == {kind.value: lane_for(kind) for kind in JobKind}


def test_every_setting_is_in_the_readme():
    names = [f"`{ENV_PREFIX}{field.upper()}`" for field in Settings.model_fields]
    assert [name for name in names if name not in section("Configuration")] == []


@pytest.mark.slow
def test_the_first_10_minutes_run_as_written(tmp_path):
    """One server start, one small training: the blocks run in one shell, in order, stopping at the first
    command that fails (``set -euo pipefail``)."""
    for tool in ("curl", "jq"):
        if shutil.which(tool) is None:
            unavailable(tool, f"the walkthrough calls {tool}; install Debian's {tool} package")
    blocks = re.findall(r"```bash\n(.*?)```", section("First 10 minutes"), flags=re.DOTALL)
    script = "".join(blocks)
    port = free_port()
    assert script.count("LABELWHEEL_PORT=8000") == 1
    script = script.replace("LABELWHEEL_PORT=8000", f"LABELWHEEL_PORT={port}")
    env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", "TMPDIR": str(tmp_path)}
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: whatever the script left running is stopped below
    )
    try:
        output, _ = shell.communicate(timeout=240)
    finally:
        stop_group(shell.pid)
    said = "\n".join(line for line in output.splitlines() if not line.startswith('{"ts"'))  # not the JSON logs
    assert shell.returncode == 0, said
    assert f"labelwheel on http://127.0.0.1:{port}" in said
    assert '{"accepted":200,"duplicate":0,"rejected":0}' in said
    assert '"kind":"train","status":"succeeded"' in said
    assert "first model:" in said  # the champion's decision, its reason printed by the walkthrough
    (model,) = tmp_path.glob("*/digits.onnx")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding"]


def stop_group(pgid: int, timeout: float = 30) -> None:
    """Stop what the script left in its process group (normally nothing: its last command stops the server)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
    os.killpg(pgid, signal.SIGKILL)
