"""`labelwheel labelstudio connect | status | push`: an existing Label Studio project as a flywheel. They work on
this machine's database while `labelwheel serve` runs here, at the URL Label Studio reaches it by."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from service.cli_places import where_it_looked
from storage.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from flywheel.labelstudio.backend import Backend

labelstudio_app = typer.Typer(
    help="Label Studio: labelwheel as the model behind a Label Studio project.", no_args_is_help=True
)
console = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    console.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(1)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None


@contextmanager
def _errors(url: str) -> Iterator[None]:
    """labelwheel's refusals, Label Studio's (a wrong token, an unknown project) and an unreachable server: one
    line, exit 1."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    from storage.errors import LabelwheelError, NotFound

    try:
        yield
    except NotFound as exc:
        raise _fail(f"{exc.message} {where_it_looked(_settings())}") from None
    except LabelwheelError as exc:
        raise _fail(exc.message) from None
    except ApiError as exc:
        raise _fail(f"Label Studio at {url} answered {exc.status_code}: {str(exc.body)[:300]}") from None
    except httpx.HTTPError as exc:
        raise _fail(f"Label Studio at {url} could not be reached: {exc}") from None


def _backend(settings: Settings) -> Backend:
    from flywheel.labelstudio.backend import Backend
    from flywheel.serving.inference import Predictor
    from storage.blobs import blob_store_from_settings
    from storage.db import Database
    from storage.ingest import Limits
    from storage.migrate import upgrade

    if settings.uses_sqlite:
        upgrade(settings.resolved_database_url)
    blobs = blob_store_from_settings(settings)
    db = Database(settings.resolved_database_url)
    return Backend(db=db, blobs=blobs, limits=Limits.from_settings(settings), predictor=Predictor(blobs))


def _project_id(backend: Backend, name: str) -> int:
    from storage.projects import get_project_by_name

    with _errors(""), backend.db.read_session() as session:
        return get_project_by_name(session, name=name).id


@labelstudio_app.command("connect")
def connect(
    url: Annotated[str, typer.Option(help="The Label Studio server, e.g. http://labelstudio:8080.")],
    api_key: Annotated[str, typer.Option(envvar="LABEL_STUDIO_API_KEY", help="A Label Studio API (legacy) token.")],
    ls_project: Annotated[int, typer.Option(help="The Label Studio project's id.")],
    project: Annotated[str, typer.Option(help="The labelwheel project (created with the config's classes if new).")],
    backend_url: Annotated[
        str | None,
        typer.Option(help="How Label Studio reaches this labelwheel server (default http://LABELWHEEL_HOST:PORT)."),
    ] = None,
) -> None:
    """Import the Label Studio project's images and annotations, register labelwheel as its ML backend and webhook,
    turn on pre-filling. Running it again adds only what is new."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from flywheel.labelstudio.connect import connect as run_connect

    settings = _settings()
    base = backend_url or f"http://{settings.host}:{settings.port}"
    with (
        _errors(url),
        Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console) as progress,
    ):
        bar = progress.add_task("tasks", total=None)
        done = run_connect(
            _backend(settings),
            url=url,
            api_key=api_key,
            ls_project_id=ls_project,
            project_name=project,
            backend_base_url=base,
            on_tasks=lambda n: progress.advance(bar, n),
        )
    for task_id, code, message in done.refused[:50]:
        console.print(f"task {task_id} {code}: {message}", style="yellow", markup=False, highlight=False)
    summary = done.answers
    typer.echo(
        f"project {project!r} ({'created' if done.project_created else 'existing'}, id {done.project_id}): "
        f"{done.tasks} tasks, {done.images_held} images held, {len(done.refused)} refused; "
        f"{summary.annotations_imported} annotations imported, {summary.annotations_existing} already there; "
        f"ML backend {done.ml_backend_id} and webhook {done.webhook_id} at {done.backend_url}"
    )


@labelstudio_app.command("status")
def status(project: Annotated[str, typer.Option(help="The labelwheel project.")]) -> None:
    """What is connected and whether it is in sync: tasks held and predictions pushed against Label Studio's own
    counts, and its registration of labelwheel."""
    from flywheel.labelstudio.connect import label_studio_status

    backend = _backend(_settings())
    with _errors("the linked server"):
        lines = label_studio_status(backend.db, project_id=_project_id(backend, project))
    for name, value in lines.items():
        typer.echo(f"{name}: {value}")


@labelstudio_app.command("push")
def push(project: Annotated[str, typer.Option(help="The labelwheel project.")]) -> None:
    """Push fresh predictions now for the tasks whose score (queue priority) or model changed (mining does this
    after each pass)."""
    from flywheel.labelstudio.connect import push_predictions

    backend = _backend(_settings())
    with _errors("the linked server"):
        pushed = push_predictions(backend, project_id=_project_id(backend, project))
    typer.echo(f"{pushed.tasks} predictions pushed (model {pushed.model_version or 'none'})")
