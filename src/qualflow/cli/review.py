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
    from qualflow.review.app import create_app, freeze_start_up_objects

    settings = _settings(workspace)
    store = _store(workspace)
    book, origin = command_codebook(settings, store, None)
    require_shared_codes(store, book)
    typer.echo(f"codebook: {codebook_label(book)}, {origin}")
    if not auth.users(store):
        typer.echo("No accounts yet: create one with `qualflow users add NAME --role admin`.")
    from qualflow.review import queue

    queue.sync(store)  # the queue table: filled on a store's first start, then in step
    typer.echo(f"review queue: {queue.study_progress(store).total} units")
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
        web = create_app(settings, store)
        freeze_start_up_objects()
        uvicorn.run(web, host=host, port=port, log_level="warning")


def _accounts(workspace: Path):
    """(store, audit log, actor) for an account command run from the command line."""
    import getpass

    from qualflow.review import auth
    from qualflow.review.audit import AuditLog

    settings = _settings(workspace)
    store = _store(workspace)
    secret = settings.session_secret.get_secret_value() if settings.session_secret else None
    audit = AuditLog(store, auth.load_secret(secret, settings.data_dir))
    try:
        actor = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment
        actor = "cli"
    return store, audit, actor


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _account_error(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


PasswordStdin = typer.Option(
    False, "--password-stdin", help="Read the password from the first line of stdin."
)


def users_add(
    name: str = typer.Argument(..., help="User name (no spaces)."),
    role: str = typer.Option("reviewer", help="admin or reviewer."),
    password_stdin: bool = PasswordStdin,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Create an account (the password is prompted unless --password-stdin)."""
    from qualflow.review import auth

    password = _read_password(password_stdin)
    store, audit, actor = _accounts(workspace)
    try:
        user = auth.add_user(store, name, password, role, audit=audit, actor=actor)
    except auth.AuthError as exc:
        raise _account_error(exc) from None
    typer.echo(f"created {user.role} '{user.username}'")


def users_list(workspace: WorkspaceOption = Path(".")) -> None:
    """List accounts with their role, state and open sessions."""
    from qualflow.models import utcnow
    from qualflow.review import auth

    store = _store(workspace)
    now = utcnow()
    for u in auth.users(store):
        state = "active" if u.active else "inactive"
        typer.echo(
            f"{u.username}\t{u.role}\t{state}\t{auth.open_sessions(store, u.id, now)} sessions"
        )


def _set_active(name: str, active: bool, workspace: Path) -> None:
    from qualflow.review import auth

    store, audit, actor = _accounts(workspace)
    try:
        auth.set_active(store, name, active, audit=audit, actor=actor)
    except auth.AuthError as exc:
        raise _account_error(exc) from None
    typer.echo(f"{'activated' if active else 'deactivated'} '{name}'")


def users_deactivate(
    name: str = typer.Argument(...), workspace: WorkspaceOption = Path(".")
) -> None:
    """Deactivate an account (its sessions end at once and stay ended; its decisions stay)."""
    _set_active(name, False, workspace)


def users_activate(name: str = typer.Argument(...), workspace: WorkspaceOption = Path(".")) -> None:
    """Re-activate an account (it logs in afresh: old sessions stay ended)."""
    _set_active(name, True, workspace)


def users_role(
    name: str = typer.Argument(...),
    role: str = typer.Argument(..., help="admin or reviewer."),
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Change an account's role (its sessions end; it logs in again under the new role)."""
    from qualflow.review import auth

    store, audit, actor = _accounts(workspace)
    try:
        user = auth.set_role(store, name, role, audit=audit, actor=actor)
    except auth.AuthError as exc:
        raise _account_error(exc) from None
    typer.echo(f"'{user.username}' is now {user.role}; their sessions ended")


def users_password(
    name: str = typer.Argument(...),
    password_stdin: bool = PasswordStdin,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Set a new password (prompted unless --password-stdin); the account's sessions end
    and its login throttle is cleared."""
    from qualflow.review import auth

    password = _read_password(password_stdin)
    store, audit, actor = _accounts(workspace)
    try:
        auth.set_password(store, name, password, audit=audit, actor=actor)
    except auth.AuthError as exc:
        raise _account_error(exc) from None
    typer.echo(f"password of '{name}' changed; their sessions ended")


def users_logout(name: str = typer.Argument(...), workspace: WorkspaceOption = Path(".")) -> None:
    """End every session of an account now (e.g. a lost laptop)."""
    from qualflow.review import auth

    store, audit, actor = _accounts(workspace)
    try:
        user = auth.user_by_name(store, name)
        if user is None:
            raise auth.AuthError(f"no user '{name}'")
        ended = auth.end_sessions(
            store, user, "ended from the command line", audit=audit, actor=actor
        )
    except auth.AuthError as exc:
        raise _account_error(exc) from None
    typer.echo(f"ended {ended} session(s) of '{name}'")


def users_unlock(name: str = typer.Argument(...), workspace: WorkspaceOption = Path(".")) -> None:
    """Clear an account's login throttle after failed logins (its failures start from zero;
    the per-address throttle is not affected)."""
    from qualflow.review import auth

    store, audit, actor = _accounts(workspace)
    try:
        auth.unlock(store, name, audit=audit, actor=actor)
    except auth.AuthError as exc:
        raise _account_error(exc) from None
    typer.echo(f"login throttle of '{name}' cleared")


def users_audit(
    user: str | None = typer.Option(None, "--user", help="Only events of this account."),
    event: str | None = typer.Option(
        None, "--event", help="Only this kind: login, login_failed, login_throttled, logout, ..."
    ),
    limit: int = typer.Option(50, "--limit", min=1, help="The newest N events."),
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Print the review app's security audit log (logins, failures, throttled logins,
    logouts, ended sessions, account changes), oldest first. A failed login on a name
    that is no account shows no name."""
    from qualflow.review.audit import EVENTS, read_events

    if event is not None and event not in EVENTS:
        raise _account_error(ValueError(f"event '{event}': must be one of {', '.join(EVENTS)}"))
    for e in read_events(_store(workspace), username=user, event=event, limit=limit):
        cells = [
            e.time.strftime("%Y-%m-%d %H:%M:%S"),
            e.event,
            e.username or "-",
            f"by {e.actor}" if e.actor else "-",
            e.address or "-",
            e.detail,
        ]
        typer.echo("\t".join(cells))


def assign(
    reviewers: str = typer.Option(..., help="Comma-separated user names."),
    double: float = typer.Option(0.0, help="Share of units coded by two reviewers (0-1)."),
    strategy: str = typer.Option("balanced", help="balanced or round_robin."),
    seed: int = typer.Option(0, help="Seed of the double-coding sample."),
    blind_machine: bool = typer.Option(
        False, "--blind-machine", help="Hide machine proposals on double-coded units."
    ),
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Assign the queue units nobody holds yet to reviewers."""
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
        f"assigned {report.passages} units: {report.assignments} assignments, "
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
    users.command("role")(users_role)
    users.command("password")(users_password)
    users.command("logout")(users_logout)
    users.command("unlock")(users_unlock)
    users.command("audit")(users_audit)
    app.add_typer(users, name="users")
