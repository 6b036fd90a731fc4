"""Saved servers: ``labelwheel login`` stores a URL and token under a profile name, and the remote commands and
``Client.from_profile()`` read them, so a token need not sit in the shell's history or environment.

One JSON file in the user's configuration folder (``~/.config/labelwheel/profiles.json`` on Linux), readable by
its owner only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import typer


@dataclass(frozen=True)
class Profile:
    url: str
    token: str


def profiles_path() -> Path:
    return Path(typer.get_app_dir("labelwheel")) / "profiles.json"


def _read(path: Path) -> dict[str, dict[str, str]]:
    return json.loads(path.read_text()) if path.exists() else {}


def load_profile(name: str) -> Profile:
    path = profiles_path()
    saved = _read(path)
    if name not in saved:
        known = f"saved: {', '.join(sorted(saved))}" if saved else "none saved yet"
        raise LookupError(
            f"no profile named {name!r} in {path} ({known}); save one with `labelwheel login --url URL --token "
            f"TOKEN --profile {name}`"
        )
    return Profile(**saved[name])


def save_profile(name: str, profile: Profile) -> Path:
    path = profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {**_read(path), name: asdict(profile)}
    partial = path.with_name(path.name + ".part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the tokens: owner only
    with os.fdopen(descriptor, "w") as out:
        json.dump(saved, out, indent=2)
    partial.replace(path)
    return path
