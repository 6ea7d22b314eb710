"""CLI of the review app: ``qualflow review``, ``qualflow users ...``, ``qualflow assign``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from qualflow.cli.common import (
    WorkspaceOption,
    codebook_label,
    command_codebook,
    require_shared_codes,
)


def _settings(workspace: Path):
    from qualflow.settings import load_settings

    return load_settings(workspace)


def _store(workspace: Path):
    from qualflow.store import open_store

    return open_store(_settings(workspace))


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", help="Server processes (uvicorn workers)."),
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Serve the review queue of a workspace in the browser."""
    import os

    import uvicorn

    from qualflow.review import auth
    from qualflow.review.app import create_app

    settings = _settings(workspace)
    store = _store(workspace)
    book, origin = command_codebook(settings, store, None)
    require_shared_codes(store, book)
    typer.echo(f"codebook: {codebook_label(book)}, {origin}")
    if not auth.users(store):
        typer.echo("No accounts yet: create one with `qualflow users add NAME --role admin`.")
    typer.echo(f"qualflow review on http://{host}:{port} (store: {store.engine.url.drivername})")
    if workers > 1:
        secret = settings.session_secret.get_secret_value() if settings.session_secret else None
        auth.load_secret(secret, settings.data_dir)  # one key for every worker
        os.environ["QUALFLOW_WORKSPACE"] = str(settings.workspace)
        store.close()
        uvicorn.run(
            "qualflow.review.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
        )
    else:
        uvicorn.run(create_app(settings, store), host=host, port=port, log_level="warning")


def users_add(
    name: str = typer.Argument(..., help="User name (no spaces)."),
    role: str = typer.Option("reviewer", help="admin or reviewer."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin."
    ),
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Create an account (the password is prompted unless --password-stdin)."""
    from qualflow.review import auth

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = auth.add_user(_store(workspace), name, password, role)
    except auth.AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"created {user.role} '{user.username}'")


def users_list(workspace: WorkspaceOption = Path(".")) -> None:
    """List accounts with their role and state."""
    from qualflow.review import auth

    for u in auth.users(_store(workspace)):
        typer.echo(f"{u.username}\t{u.role}\t{'active' if u.active else 'inactive'}")


def _set_active(name: str, active: bool, workspace: Path) -> None:
    from qualflow.review import auth

    try:
        auth.set_active(_store(workspace), name, active)
    except auth.AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{'activated' if active else 'deactivated'} '{name}'")


def users_deactivate(
    name: str = typer.Argument(...), workspace: WorkspaceOption = Path(".")
) -> None:
    """Deactivate an account (its sessions end at once; its decisions stay)."""
    _set_active(name, False, workspace)


def users_activate(name: str = typer.Argument(...), workspace: WorkspaceOption = Path(".")) -> None:
    """Re-activate an account."""
    _set_active(name, True, workspace)


def assign(
    reviewers: str = typer.Option(..., help="Comma-separated user names."),
    double: float = typer.Option(0.0, help="Share of passages coded by two reviewers (0-1)."),
    strategy: str = typer.Option("balanced", help="balanced or round_robin."),
    seed: int = typer.Option(0, help="Seed of the double-coding sample."),
    blind_machine: bool = typer.Option(
        False, "--blind-machine", help="Hide machine proposals on double-coded passages."
    ),
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Assign the queue passages nobody holds yet to reviewers."""
    from qualflow.review import queue

    names = [r.strip() for r in reviewers.split(",") if r.strip()]
    try:
        report = queue.assign(
            _store(workspace),
            names,
            strategy=strategy,
            double_share=double,
            seed=seed,
            blind_machine=blind_machine,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"assigned {report.passages} passages: {report.assignments} assignments, "
        f"{report.double_coded} double-coded"
    )
    for name, n in report.per_reviewer.items():
        typer.echo(f"  {name}\t{n}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("review")(serve)
    app.command("assign")(assign)
    users = typer.Typer(help="Review-app accounts.", no_args_is_help=True)
    users.command("add")(users_add)
    users.command("list")(users_list)
    users.command("deactivate")(users_deactivate)
    users.command("activate")(users_activate)
    app.add_typer(users, name="users")
