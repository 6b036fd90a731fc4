"""A real Label Studio server for the interop tests, in a virtual environment of its own (``label-studio`` pins
Django and much else: it never enters labelwheel's dependencies).

The environment is built once per Label Studio version under ``~/.cache/labelwheel/`` (``LABELWHEEL_LS_CACHE``)
with uv (or venv and pip), and so is a data directory whose migrations have run (a first start migrates for one
to two minutes; a start from the copy takes seconds). Standard library only: ``.ci/run`` builds the environment
with ``python3 tests/labelstudio_server.py`` before the tests, without labelwheel's own environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VERSION = "1.23.2"
USER, PASSWORD, TOKEN = "admin@example.com", "labelwheel-test-pw", "labelwheeltesttoken0123456789"
START_TIMEOUT = 300.0


def cache_dir() -> Path:
    return Path(os.environ.get("LABELWHEEL_LS_CACHE") or Path.home() / ".cache" / "labelwheel")


def env_dir() -> Path:
    return cache_dir() / f"labelstudio-{VERSION}"


def _uv() -> str | None:
    for candidate in (shutil.which("uv"), Path.home() / ".local" / "bin" / "uv"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def ensure_env() -> Path:
    """The environment's ``label-studio`` command, built if missing (into a side folder, renamed when complete, so
    an interrupted build is never taken for a finished one)."""
    command = env_dir() / "bin" / "label-studio"
    if command.exists():
        return command
    cache_dir().mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"labelstudio-{VERSION}.", suffix=".partial", dir=cache_dir()))
    try:
        uv = _uv()
        if uv:
            subprocess.run([uv, "venv", "--quiet", "--allow-existing", "--python", sys.executable, str(partial)],
                           check=True)  # fmt: skip
            subprocess.run([uv, "pip", "install", "--quiet", "--python", str(partial / "bin" / "python"),
                            f"label-studio=={VERSION}"], check=True)  # fmt: skip
        else:
            subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True)
            subprocess.run([str(partial / "bin" / "pip"), "install", "--quiet", f"label-studio=={VERSION}"], check=True)
        # Scripts name their interpreter by absolute path: build in place of the final folder's name.
        if env_dir().exists():
            shutil.rmtree(partial)
        else:
            partial.rename(env_dir())
            _fix_shebangs(partial, env_dir())
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return command


def _fix_shebangs(old: Path, new: Path) -> None:
    """The scripts of a virtual environment name its python by absolute path; point them at the moved folder."""
    for script in (new / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            head = script.read_bytes()[:200]
            if head.startswith(b"#!") and str(old).encode() in head:
                script.write_bytes(script.read_bytes().replace(str(old).encode(), str(new).encode()))
    config = new / "pyvenv.cfg"
    config.write_text(config.read_text().replace(str(old), str(new)))


def server_env(data_dir: Path) -> dict[str, str]:
    """Settings from Label Studio's docs as the shared notes list them: a known admin and legacy token, nothing
    called outside, and ML backends on 127.0.0.1 allowed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(
        LABEL_STUDIO_USERNAME=USER,
        LABEL_STUDIO_PASSWORD=PASSWORD,
        LABEL_STUDIO_USER_TOKEN=TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_COLLECT_ANALYTICS="false",
        LABEL_STUDIO_SENTRY_DSN="",
        LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
        LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false",
        LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Running:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(data_dir: Path, *, log: Path) -> Running:
    """Label Studio on a free loopback port, once it answers /health; RuntimeError (with its log's tail) if not."""
    command = ensure_env()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(command), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(data_dir), "--enable-legacy-api-token"],
            env=server_env(data_dir), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    running = Running(url, process, log)
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            running.stop()
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"Label Studio did not answer on {url} (it may have moved to another port): {tail}")
        time.sleep(0.5)
    return running


def lock_path() -> Path:
    """Held by whoever builds the environment or the data directory (one builder per machine)."""
    return cache_dir() / f"labelstudio-{VERSION}.lock"


def migrated_template(log: Path) -> Path:
    """The cached data directory whose migrations have run and whose admin and token exist, made by a first start
    when missing (call it holding ``lock_path()``)."""
    template = cache_dir() / f"labelstudio-{VERSION}-data"
    if not template.exists():
        building = Path(tempfile.mkdtemp(prefix="data.", suffix=".partial", dir=cache_dir()))
        try:
            start(building, log=log).stop()
            if not template.exists():
                building.rename(template)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return template


def migrated_data(work: Path) -> Path:
    """A copy of the migrated data directory for one test run."""
    data = work / "labelstudio-data"
    shutil.copytree(migrated_template(work / "labelstudio-first-start.log"), data)
    return data


if __name__ == "__main__":
    import fcntl

    # --data: also the migrated data directory (``.ci/run`` builds it in the background while the suite sets up;
    # the test waits for the lock).
    cache_dir().mkdir(parents=True, exist_ok=True)
    with lock_path().open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the lock the tests take with filelock (flock too)
        began = time.monotonic()
        print(f"label-studio {VERSION}: {ensure_env()} ({time.monotonic() - began:.1f} s)")  # noqa: T201
        if "--data" in sys.argv[1:]:
            began = time.monotonic()
            template = migrated_template(cache_dir() / f"labelstudio-{VERSION}-first-start.log")
            print(f"label-studio {VERSION} data: {template} ({time.monotonic() - began:.1f} s)")  # noqa: T201
