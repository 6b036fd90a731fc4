"""The commands that reach a labelwheel server from anywhere (a laptop, a training box): login, pull model, pull
dataset, push and predict. They talk HTTP through ``service.client`` and never open a database, so they work the
same whichever folder they run in; the server is ``--url`` and ``--token`` (``LABELWHEEL_URL``,
``LABELWHEEL_TOKEN``) or a profile saved by ``labelwheel login``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from service.client import Client

REMOTE_COMMANDS = frozenset({"login", "pull", "push", "predict"})

pull_app = typer.Typer(help="Download a model or a dataset snapshot from a server.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)

Url = Annotated[str | None, typer.Option(envvar="LABELWHEEL_URL", help="The server, e.g. http://labelwheel:8000.")]
Token = Annotated[str | None, typer.Option(envvar="LABELWHEEL_TOKEN", help="Your API token.", show_default=False)]
ProfileName = Annotated[
    str, typer.Option("--profile", envvar="LABELWHEEL_PROFILE", help="A server saved by `labelwheel login`.")
]
ProjectName = Annotated[str, typer.Option(help="Project name (or id).")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(code)


@contextmanager
def _client(url: str | None, token: str | None, profile: str) -> Iterator[Client]:
    """The server of ``--url``/``--token``, each missing one from the profile; a refusal ends the command with the
    server's message (exit 1)."""
    from service.client import ApiError, Client
    from service.client.profiles import load_profile

    if url is None or token is None:
        try:
            saved = load_profile(profile)
        except LookupError as exc:
            raise _fail(
                f"this command reaches a labelwheel server: pass --url and --token (or set LABELWHEEL_URL and "
                f"LABELWHEEL_TOKEN), or save them once with `labelwheel login` ({exc})",
                2,
            ) from None
        url, token = url or saved.url, token or saved.token
    try:
        with Client(url, token) as client:
            yield client
    except ApiError as exc:
        raise _fail(exc.message if exc.status is None else f"{exc.code}: {exc.message}") from None
    except (OSError, LookupError) as exc:
        raise _fail(str(exc)) from None


def _project_id(client: Client, name: str) -> int:
    """The project of that name; failing that, of that id."""
    from service.client import ApiError

    try:
        return client.project(name).id
    except ApiError as exc:
        if exc.code != "project_not_found" or not name.isdigit():
            raise
        return client.project(int(name)).id


def _bar(what: str) -> Progress:
    return Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console)


def _advance(progress: Progress, what: str) -> Callable[[int, int], None]:
    task = progress.add_task(what, total=None)
    return lambda done, total: progress.update(task, completed=done, total=total)


def login(
    url: Annotated[str, typer.Option(envvar="LABELWHEEL_URL", help="The server, e.g. http://labelwheel:8000.")],
    token: Annotated[str, typer.Option(envvar="LABELWHEEL_TOKEN", help="Your API token.", show_default=False)],
    profile: ProfileName = "default",
) -> None:
    """Check a server and token, and save them as a profile the remote commands use when given no --url."""
    from service.client.profiles import Profile, save_profile

    with _client(url, token, profile) as client:
        me = client.me()
    path = save_profile(profile, Profile(url=url, token=token))
    typer.echo(f"profile {profile!r}: {url} as {me.name} ({me.role.value}), saved in {path}")


@pull_app.command("model")
def pull_model(
    project: ProjectName,
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder to write the model and its card into.")],
    version: Annotated[str, typer.Option(help="A model id, or champion.")] = "champion",
    format: Annotated[str, typer.Option("--format", help="onnx or weights (a PyTorch checkpoint).")] = "onnx",
    url: Url = None,
    token: Token = None,
    profile: ProfileName = "default",
) -> None:
    """Download a model (the champion by default) and its card, checked against the card's sha256."""
    if format not in {"onnx", "weights"}:
        raise _fail(f"unknown format {format!r}: use onnx or weights", 2)
    if version != "champion" and not version.isdigit():
        raise _fail(f"--version {version!r}: give a model id or champion", 2)
    with _client(url, token, profile) as client:
        project_id = _project_id(client, project)
        card = client.champion(project_id) if version == "champion" else client.model_card(int(version))
        if card["project_id"] != project_id:
            raise _fail(f"model {card['id']} is not a model of project {project!r}")
        path = client.download_model(card["id"], out, format=format)
    snapshot = card["snapshot"] and card["snapshot"]["id"]
    typer.echo(f"model {card['id']} ({card['status']}, trained on snapshot {snapshot}): {path}")


@pull_app.command("dataset")
def pull_dataset(
    project: ProjectName,
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder to write into (the same folder resumes).")],
    snapshot: Annotated[
        str, typer.Option(help="A snapshot id; champion: the one the champion was trained on; new: the labels now.")
    ] = "champion",
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Classification: imagefolder (train/<label>/, test/<label>/; the default) or csv (images/). "
            "Detection: coco (train/, test/, annotations/; the default) or yolo (images/, labels/, data.yaml).",
        ),
    ] = None,
    url: Url = None,
    token: Token = None,
    profile: ProfileName = "default",
) -> None:
    """Download a dataset snapshot's images and labels, each image checked against its sha256; run it again into
    the same folder to resume."""
    if snapshot not in {"champion", "new"} and not snapshot.isdigit():
        raise _fail(f"--snapshot {snapshot!r}: give a snapshot id, champion or new", 2)
    with _client(url, token, profile) as client:
        project_id = _project_id(client, project)
        if snapshot == "champion":
            frozen = client.champion(project_id)["snapshot"]
            if frozen is None:
                raise _fail("the champion names no snapshot; pass --snapshot ID or --snapshot new")
            snapshot_id = frozen["id"]
        elif snapshot == "new":
            snapshot_id = client.create_snapshot(project_id).id
        else:
            snapshot_id = int(snapshot)
        if client.snapshot(snapshot_id).project_id != project_id:
            raise _fail(f"snapshot {snapshot_id} is not a snapshot of project {project!r}")
        with _bar("pulling") as progress:
            pulled = client.pull_dataset(snapshot_id, out, format=format, on_progress=_advance(progress, "pull"))
    typer.echo(
        f"snapshot {snapshot_id} as {pulled.format}: {pulled.images} images in {pulled.folder} ({pulled.fetched} "
        f"downloaded now), labels in {pulled.folder / 'labels.csv'}"
    )


def push(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="Folders, image files or zip archives.")],
    project: ProjectName,
    url: Url = None,
    token: Token = None,
    profile: ProfileName = "default",
) -> None:
    """Upload images to a project on a server (folders recursively); pushing again adds nothing."""
    with _client(url, token, profile) as client, _bar("pushing") as progress:
        summary = client.upload(_project_id(client, project), paths, on_progress=_advance(progress, "push"))
    for result in summary.files:
        if result.status.value == "rejected":
            console.print(f"[yellow]rejected[/yellow] {result.name}: {result.reason}")
    typer.echo(f"{summary.accepted} accepted, {summary.duplicate} duplicate, {summary.rejected} rejected")
    if not summary.accepted and not summary.duplicate:
        raise typer.Exit(1)


def predict(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Image files.")],
    project: ProjectName,
    url: Url = None,
    token: Token = None,
    profile: ProfileName = "default",
) -> None:
    """Predict with the project's serving model: one line per file, tab-separated: file, label, confidence,
    model version (a detection project: file, its boxes as "label score x y w h" separated by "; ", model
    version)."""
    with _client(url, token, profile) as client:
        answers = client.predict(_project_id(client, project), files)
    for path, answer in zip(files, answers, strict=True):
        if answer.boxes is not None:  # a detection project: its boxes, "label score x y w h" each, ";" between
            found = "; ".join(f"{b.label} {b.score:.4f} {b.x:g} {b.y:g} {b.w:g} {b.h:g}" for b in answer.boxes)
            typer.echo(f"{path}\t{found}\t{answer.model_version}")
        else:
            typer.echo(f"{path}\t{answer.label}\t{answer.confidence:.4f}\t{answer.model_version}")
