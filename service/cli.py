"""The `labelwheel` command: serve, database upgrades, users, and folder import."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from storage.settings import Settings, SettingsError, get_settings

app = typer.Typer(help="labelwheel: image labeling and data-flywheel service.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users and API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")

console = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _database(settings: Settings):
    from storage.db import Database
    from storage.migrate import upgrade

    if settings.uses_sqlite:
        upgrade(settings.resolved_database_url)
    return Database(settings.resolved_database_url)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Start the API server (the embedded default keeps everything under LABELWHEEL_DATA_DIR)."""
    import uvicorn

    from service.app import create_app
    from service.observability import configure_logging
    from storage.users import ensure_admin

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    configure_logging(settings.log_level)
    app_ = create_app(settings)
    with app_.state.runtime.db.session() as session:
        token = ensure_admin(session, token=settings.admin_token)
    shown = "localhost" if host in {"0.0.0.0", "::"} else host
    console.print(f"labelwheel on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs)")
    console.print(f"data: {settings.resolved_database_url}  blobs: {settings.resolved_blob_url}")
    if token:
        console.print(f"admin token (shown once, keep it): [bold]{token}[/bold]")
    elif settings.admin_token:
        console.print("admin token: the one in LABELWHEEL_ADMIN_TOKEN")
    else:
        console.print("an admin exists already; `labelwheel users rotate-token admin` prints a new token")
    uvicorn.run(app_, host=host, port=port, log_config=None, timeout_graceful_shutdown=10)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply database migrations (PostgreSQL deployments run this before starting new code)."""
    from storage.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url, revision)
    console.print(f"database at {revision}")


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin, engineer or annotator.")] = "annotator",
) -> None:
    """Create a user and print their API token (shown only this once)."""
    from storage.errors import LabelwheelError
    from storage.models import Role
    from storage.users import create_user

    if role not in {r.value for r in Role}:
        console.print(f"[red]unknown role {role!r}: use admin, engineer or annotator[/red]")
        raise typer.Exit(2)
    db = _database(_settings())
    try:
        with db.session() as session:
            _, token = create_user(session, name=name, role=Role(role))
    except LabelwheelError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    typer.echo(token)


@users_app.command("rotate-token")
def users_rotate(name: str) -> None:
    """Give a user a new API token (the old one stops working) and print it."""
    from storage.errors import LabelwheelError
    from storage.users import rotate_token

    db = _database(_settings())
    try:
        with db.session() as session:
            token = rotate_token(session, name=name)
    except LabelwheelError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    typer.echo(token)


@app.command("import")
def import_folder(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder of images, read recursively.")],
    project: Annotated[str, typer.Option(help="Project name.")],
    workers: Annotated[int, typer.Option(help="Parallel decoders.")] = 2,
) -> None:
    """Import every image under FOLDER into a project; running it again adds nothing (dedup)."""
    from service.app import blob_store_for
    from storage.errors import LabelwheelError
    from storage.ingest import Ingestor, Limits, Outcome, candidates_from_folder
    from storage.projects import get_project_by_name

    settings = _settings()
    db = _database(settings)
    try:
        with db.session() as session:
            project_id = get_project_by_name(session, name=project).id
    except LabelwheelError as exc:
        console.print(f"[red]{exc.message}; create it with POST /api/v1/projects[/red]")
        raise typer.Exit(1) from None
    candidates = candidates_from_folder(folder)
    ingestor = Ingestor(db=db, blobs=blob_store_for(settings), limits=Limits.from_settings(settings), workers=workers)
    with Progress(
        TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        task = progress.add_task("import", total=len(candidates))
        results = ingestor.ingest(project_id, candidates, on_progress=lambda n: progress.advance(task, n))
    counts = {o: sum(r.status is o for r in results) for o in Outcome}
    for r in results:
        if r.status is Outcome.rejected:
            console.print(f"[yellow]rejected[/yellow] {r.name}: {r.reason}")
    typer.echo(
        f"{counts[Outcome.accepted]} accepted, {counts[Outcome.duplicate]} duplicate, "
        f"{counts[Outcome.rejected]} rejected"
    )
    sys.exit(0)


if __name__ == "__main__":
    app()
