"""The `labelwheel` command: serve, worker, mining, database upgrades, users and project members, folder import,
label export and Label Studio import. Each command calls the plain functions the HTTP routers call."""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service.cli_labelstudio import labelstudio_app
from service.cli_places import where_it_looked
from service.cli_remote import REMOTE_COMMANDS, login, predict, pull_app, push
from storage.settings import Settings, SettingsError, get_settings

app = typer.Typer(help="labelwheel: image labeling and data-flywheel service.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users and API tokens.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects.", no_args_is_help=True)
members_app = typer.Typer(help="Who may see a project and label in it.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(projects_app, name="projects")
projects_app.add_typer(members_app, name="members")
app.add_typer(labelstudio_app, name="labelstudio")

console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _here_or_there(
    context: typer.Context,
    url: Annotated[str | None, typer.Option(envvar="LABELWHEEL_URL", hidden=True)] = None,
) -> None:
    """A command that works on this machine's database refuses to run while a server's URL is given: it would open
    (or create) a database here, not the server's, without a word."""
    command = context.invoked_subcommand
    if url and command and command not in REMOTE_COMMANDS:
        console.print(
            f"`labelwheel {command}` works on this machine's database and files, not on a server, and a server's URL "
            f"is given ({url}, --url or LABELWHEEL_URL): run it on the server's machine without LABELWHEEL_URL; from "
            f"here, `labelwheel {' | '.join(sorted(REMOTE_COMMANDS))}` reach the server",
            style="red",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _error(message: str) -> None:
    console.print(message, style="red", markup=False, highlight=False)


@contextmanager
def _exit_on_error(settings: Settings) -> Iterator[None]:
    """End the command with the message of a domain error (exit 1); "not found" also says where it looked."""
    from storage.errors import LabelwheelError, NotFound

    try:
        yield
    except LabelwheelError as exc:
        _error(f"{exc.message} {where_it_looked(settings)}" if isinstance(exc, NotFound) else exc.message)
        raise typer.Exit(1) from None


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
    workers: Annotated[int | None, typer.Option(help="API worker processes (LABELWHEEL_WORKERS).")] = None,
) -> None:
    """Start the API server (the embedded default keeps everything under LABELWHEEL_DATA_DIR)."""
    import uvicorn

    from service.listening import announce_when_answering, bind_error
    from storage.logs import configure_logging
    from storage.users import ensure_admin

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    if (error := bind_error(host, port)) is not None:
        console.print(
            f"cannot listen on {host}:{port}: {error.strerror or error}; stop what holds it, or choose another "
            "with --port or LABELWHEEL_PORT",
            style="red",
            markup=False,
        )
        raise typer.Exit(2)
    configure_logging(settings.log_level)
    db = _database(settings)
    with db.session() as session:
        token = ensure_admin(session, token=settings.admin_token)
    db.dispose()
    console.print(f"data: {settings.resolved_database_url}  blobs: {settings.resolved_blob_url}  workers: {workers}")
    if token:
        console.print(f"admin token (shown once, keep it): [bold]{token}[/bold]")
    elif settings.admin_token:
        console.print("admin token: the one in LABELWHEEL_ADMIN_TOKEN")
    else:
        console.print("an admin exists already; `labelwheel users rotate-token admin` prints a new token")
    options: dict[str, Any] = {"host": host, "port": port, "log_config": None, "timeout_graceful_shutdown": 10}
    job_worker = _start_job_worker() if settings.embedded_worker else None
    if job_worker is None:
        console.print("jobs: no worker started here (LABELWHEEL_EMBEDDED_WORKER=false); run `labelwheel worker`")
    shown = "localhost" if host in {"0.0.0.0", "::"} else host
    stop_announcing = threading.Event()
    announce_when_answering(
        host,
        port,
        lambda: console.print(f"labelwheel on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs)"),
        stop=stop_announcing,
    )
    try:
        if workers > 1:
            # Each worker process builds its own app from the same LABELWHEEL_* environment.
            uvicorn.run("service.app:create_worker_app", factory=True, workers=workers, **options)
            return
        from service.app import create_app, settle_heap

        app_ = create_app(settings, migrate=False)
        settle_heap()
        uvicorn.run(app_, **options)
    finally:
        stop_announcing.set()
        if job_worker is not None:
            job_worker.terminate()
            job_worker.wait(timeout=30)


def _start_job_worker():  # noqa: ANN202 - a subprocess.Popen
    """The embedded default's job worker: `labelwheel worker` as a child process with the same environment.

    Should it exit on its own (its lanes kept dying), the API stays up for labeling and says so in its log;
    GET /health then reports the lanes down (503).
    """
    import logging
    import signal
    import subprocess
    import threading

    process = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--exit-with-parent"])

    def watch() -> None:
        code = process.wait()
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):  # not stopped on purpose
            logging.getLogger("labelwheel.serve").error(
                "the job worker (pid %s) exited with code %s: no background jobs run until `labelwheel serve` is "
                "restarted, and GET /health reports its lanes down; the worker's log lines above say why",
                process.pid,
                code,
            )

    threading.Thread(target=watch, name="job-worker-watch", daemon=True).start()
    return process


@app.command()
def worker(
    lane: Annotated[
        str | None,
        typer.Option(help="Consume only this lane: fast (refreshes) or slow (training, embeddings, mining)."),
    ] = None,
    exit_with_parent: Annotated[bool, typer.Option(hidden=True, help="Stop when the parent process exits.")] = False,
) -> None:
    """Run background jobs (training, refreshes, embeddings) from the queue in LABELWHEEL_QUEUE_URL."""
    from flywheel.jobs.transport import LANES
    from flywheel.worker import run_worker
    from storage.logs import configure_logging

    settings = _settings()
    if lane is not None and lane not in LANES:
        console.print(f"[red]unknown lane {lane!r}; use one of {', '.join(LANES)}[/red]")
        raise typer.Exit(2)
    configure_logging(settings.log_level)
    _database(settings).dispose()  # the embedded default upgrades its schema first
    queue = settings.resolved_queue_url.split("@")[-1]
    console.print(
        f"labelwheel worker: queue {queue}, lanes {lane or ', '.join(LANES)}, {settings.train_threads} torch thread(s)"
    )
    raise typer.Exit(run_worker((lane,) if lane else LANES, with_parent=exit_with_parent))


@app.command()
def mine(project: Annotated[str, typer.Option(help="Project name.")]) -> None:
    """Run one mining pass here and now (for cron or a Kubernetes CronJob): score, reorder the queue, relabel.

    The pass is a `mine` job like any other (visible in GET /api/v1/jobs/{id}); should this process die, a
    worker resumes it.
    """
    settings = _settings()
    db = _database(settings)
    project_id = _project_id(db, settings, project)  # a wrong name is told before seconds of imports
    import torch

    from flywheel.jobs.rows import create_job, get_job
    from flywheel.jobs.runner import run_job
    from flywheel.jobs.transport import get_transport
    from flywheel.training.handlers import run_mine
    from storage.blobs import blob_store_from_settings
    from storage.models import JobKind, JobStatus

    transport = get_transport(settings.resolved_queue_url)
    torch.set_num_threads(settings.train_threads)
    with _exit_on_error(settings), db.session() as session:
        job_id = create_job(
            session,
            project_id=project_id,
            kind=JobKind.mine,
            transport=transport,
            params={"trigger": "cli"},
            enqueue=False,
        ).id
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("mining", total=1.0)
        status = run_job(
            db,
            blob_store_from_settings(settings),
            settings,
            transport,
            job_id=job_id,
            handlers={JobKind.mine: run_mine},
            on_progress=lambda fraction, message: progress.update(bar, completed=fraction, description=message),
        )
    with db.read_session() as session:
        job = get_job(session, job_id=job_id)
    if status != JobStatus.succeeded:
        console.print(f"[red]mining job {job_id} {job.status.value}: {job.error or job.message}[/red]")
        raise typer.Exit(1)
    typer.echo(f"job {job_id}: {job.message}")


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
    project: Annotated[list[str] | None, typer.Option(help="Add the user to this project (repeatable).")] = None,
) -> None:
    """Create a user and print their API token (shown only this once)."""
    from annotation.queue import add_to_team
    from storage.models import Role
    from storage.projects import get_project_by_name
    from storage.users import create_user

    if role not in {r.value for r in Role}:
        _error(f"unknown role {role!r}: use admin, engineer or annotator")
        raise typer.Exit(2)
    settings = _settings()
    db = _database(settings)
    with _exit_on_error(settings), db.session() as session:
        projects = [get_project_by_name(session, name=p) for p in project or []]  # all found, or no user
        user, token = create_user(session, name=name, role=Role(role))
        for found in projects:
            add_to_team(session, project=found, user_ids=[user.id])
    typer.echo(token)


@users_app.command("list")
def users_list() -> None:
    """List users: id, name and role, one per line."""
    from storage.users import list_users

    settings = _settings()
    with _database(settings).read_session() as session:
        for user in list_users(session):
            typer.echo(f"{user.id}\t{user.name}\t{user.role.value}")


@users_app.command("rotate-token")
def users_rotate(name: str) -> None:
    """Give a user a new API token (the old one stops working) and print it."""
    from storage.users import rotate_token

    settings = _settings()
    db = _database(settings)
    with _exit_on_error(settings), db.session() as session:
        token = rotate_token(session, name=name)
    typer.echo(token)


@members_app.command("add")
def members_add(
    names: Annotated[list[str], typer.Argument(help="User names.", metavar="NAME...")],
    project: Annotated[str, typer.Option(help="Project name.")],
) -> None:
    """Add users to a project (adding a member again changes nothing)."""
    from annotation.queue import add_to_team
    from storage.projects import get_project_by_name
    from storage.users import get_user_by_name

    settings = _settings()
    db = _database(settings)
    with _exit_on_error(settings), db.session() as session:
        found = get_project_by_name(session, name=project)
        users = [get_user_by_name(session, name=name) for name in names]  # all found, or none added
        add_to_team(session, project=found, user_ids=[user.id for user in users])
    typer.echo(f"{len(users)} member(s) of {project!r}: {', '.join(names)}")


@members_app.command("list")
def members_list(project: Annotated[str, typer.Option(help="Project name.")]) -> None:
    """List a project's members: id, name and role, one per line (admins see every project without being members)."""
    from storage.projects import get_project_by_name, list_members

    settings = _settings()
    with _exit_on_error(settings), _database(settings).read_session() as session:
        for user in list_members(session, project=get_project_by_name(session, name=project)):
            typer.echo(f"{user.id}\t{user.name}\t{user.role.value}")


@app.command("import")
def import_folder(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder of images, read recursively.")],
    project: Annotated[str, typer.Option(help="Project name.")],
    workers: Annotated[int, typer.Option(help="Parallel decoders.")] = 2,
) -> None:
    """Import every image under FOLDER into a project; running it again adds nothing (dedup)."""
    from storage.blobs import blob_store_from_settings
    from storage.ingest import Ingestor, Limits, Outcome, candidates_from_folder

    settings = _settings()
    db = _database(settings)
    project_id = _project_id(db, settings, project)
    candidates = candidates_from_folder(folder)
    # A local folder is not a request: the per-request file limit does not apply.
    limits = dataclasses.replace(Limits.from_settings(settings), max_files=max(len(candidates), 1))
    ingestor = Ingestor(db=db, blobs=blob_store_from_settings(settings), limits=limits, workers=workers)
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


def _project_id(db, settings: Settings, name: str) -> int:
    from storage.projects import get_project_by_name

    with _exit_on_error(settings), db.read_session() as session:
        return get_project_by_name(session, name=name).id


@app.command("export")
def export_labels(
    project: Annotated[str, typer.Option(help="Project name.")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="File to write (replaced when complete).")],
    format: Annotated[
        str,
        typer.Option(
            "--format", help="csv, json or labelstudio; for a detection project coco, yolo, labelstudio or json."
        ),
    ] = "csv",
    base_url: Annotated[
        str, typer.Option(help="Prefix of the image URLs in a labelstudio export, e.g. https://labels.example.com.")
    ] = "",
    images: Annotated[bool, typer.Option("--images", help="yolo: put the image files in the zip too.")] = False,
) -> None:
    """Write the project's current labels (or boxes) to a file, streamed (the same formats as GET .../export)."""
    from annotation.exports import ExportFormat, check_export_format, count_labeled, export_chunks
    from storage.blobs import blob_store_from_settings
    from storage.models import Project

    if format not in {f.value for f in ExportFormat}:
        console.print(f"[red]unknown format {format!r}: use csv, json, labelstudio, coco or yolo[/red]")
        raise typer.Exit(2)
    settings = _settings()
    db = _database(settings)
    project_id = _project_id(db, settings, project)
    with _exit_on_error(settings), db.session() as session:
        labeled = session.get_one(Project, project_id)
        check_export_format(labeled, ExportFormat(format), images=images)
        total = count_labeled(session, project=labeled)
    written = 0
    partial = out.with_name(out.name + ".part")
    with (
        Progress(
            TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        ) as progress,
        partial.open("wb") as sink,
    ):
        task = progress.add_task("export", total=total)

        def advance(n: int) -> None:
            nonlocal written
            written += n
            progress.advance(task, n)

        chunks = export_chunks(
            db,
            project_id=project_id,
            fmt=ExportFormat(format),
            base_url=base_url,
            image_files=blob_store_from_settings(settings) if images else None,
            on_batch=advance,
        )
        for chunk in chunks:
            sink.write(chunk)
    partial.replace(out)
    typer.echo(f"{written} images written to {out}")


@app.command("import-labelstudio")
def import_labelstudio(
    export: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Label Studio's JSON export.")],
    project: Annotated[str, typer.Option(help="Project name.")],
    images: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="Folder of the tasks' image files, recursive.")
    ] = None,
    label_config: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="The Label Studio project's label config (XML).")
    ] = None,
) -> None:
    """Import a Label Studio export: images matched by file name, choices as annotations; re-running adds nothing."""

    from annotation.labelstudio import import_labelstudio as run_import
    from annotation.labelstudio_tasks import read_export
    from storage.blobs import blob_store_from_settings
    from storage.errors import LabelwheelError
    from storage.ingest import Limits, candidates_from_folder

    settings = _settings()
    db = _database(settings)
    project_id = _project_id(db, settings, project)
    candidates = candidates_from_folder(images) if images else []
    # A local folder is not one HTTP request: the per-request file limit does not apply.
    limits = dataclasses.replace(Limits.from_settings(settings), max_files=max(len(candidates), 1))
    try:
        with export.open("rb") as fileobj:
            tasks = read_export(fileobj)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        ) as progress:
            files_bar = progress.add_task("images", total=len(candidates))
            tasks_bar = progress.add_task("tasks", total=len(tasks))
            summary = run_import(
                db=db,
                blobs=blob_store_from_settings(settings),
                limits=limits,
                project_id=project_id,
                tasks=tasks,
                candidates=candidates,
                label_config=label_config.read_text() if label_config else None,
                on_images=lambda n: progress.advance(files_bar, n),
                on_tasks=lambda n: progress.advance(tasks_bar, n),
            )
    except LabelwheelError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    for problem in summary.problems:
        where = f"task {problem.task_id} (#{problem.task_index})"
        console.print(f"[yellow]{where} {problem.code}[/yellow]: {problem.message}")
    for rejected in summary.rejected_files:
        console.print(f"[yellow]rejected[/yellow] {rejected.name}: {rejected.reason}")
    typer.echo(
        f"{summary.tasks} tasks: {summary.tasks_imported} imported, {summary.tasks_rejected} rejected; "
        f"{summary.annotations_imported} annotations imported, {summary.annotations_existing} already there; "
        f"images: {summary.images_accepted} accepted, {summary.images_duplicate} duplicate, "
        f"{summary.images_rejected} rejected; {summary.users_created} users created"
    )


# The commands that reach a server over HTTP (service/cli_remote.py); every other one works on this machine's data.
app.command()(login)
app.add_typer(pull_app, name="pull")
app.command()(push)
app.command()(predict)


if __name__ == "__main__":
    app()
