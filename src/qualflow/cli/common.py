"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def require_workspace(path: Path) -> Path:
    """``path`` if it is a usable workspace, else a clear error (exit 1).

    A workspace holds ``qualflow.toml`` (``qualflow init``) or already a store
    (``data/qualflow.sqlite3``, made through the library). Any other folder is
    refused: a mistyped ``-w`` must not create a new store and code everything again
    there. So is a workspace whose store cannot be written (SQLite needs to write
    beside its file even to read).
    """
    if not is_workspace(path):
        raise fail(f"{path}: not a qualflow workspace (run `qualflow init {path}`)")
    problem = workspace_write_problem(path)
    if problem:
        raise fail(problem)
    return path


def is_workspace(path: Path) -> bool:
    from qualflow.settings import CONFIG_FILE

    return (path / CONFIG_FILE).is_file() or (path / "data" / "qualflow.sqlite3").is_file()


def workspace_write_problem(path: Path) -> str | None:
    """Why the workspace cannot be used here (settings that do not load, a SQLite
    store that cannot be written), or None.

    Checked up front so that even ``status`` explains a read-only workspace instead
    of failing deep inside SQLite. A workspace whose store is a server URL is not
    checked here.
    """
    from qualflow.settings import CONFIG_FILE, load_settings

    try:
        settings = load_settings(path)
    except Exception as exc:  # a malformed qualflow.toml or a bad QUALFLOW_* value
        return f"{path / CONFIG_FILE}: cannot read the settings: {exc}"
    if settings.database_url:
        return None
    data = settings.data_dir
    folder = data if data.exists() else settings.workspace
    db = data / "qualflow.sqlite3"
    if not os.access(folder, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.W_OK)):
        where = db if db.exists() and not os.access(db, os.W_OK) else folder
        return (
            f"{path}: the workspace is read-only ({where} cannot be written). qualflow "
            "writes to its store even to read it (SQLite keeps a journal beside the "
            "file): give write access, or copy the workspace somewhere writable"
        )
    return None


def open_workspace_store(settings):  # -> Store
    """Open (and migrate) the workspace's store; a store that cannot be opened is a
    clear error naming it (password masked) and the reason, not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from qualflow.store import open_store

    try:
        return open_store(settings)
    except (SQLAlchemyError, OSError) as exc:
        detail = getattr(exc, "orig", None) or exc
        raise fail(
            f"cannot open the store {settings.db_url_masked}: {type(detail).__name__}: "
            f"{str(detail).splitlines()[0] if str(detail) else ''}"
        ) from exc


def _workspace_callback(ctx: typer.Context, value: Path) -> Path:
    if ctx.resilient_parsing:  # shell completion: no checks
        return value
    return require_workspace(value)


WorkspaceOption = Annotated[
    Path,
    typer.Option(
        "--workspace",
        "-w",
        envvar="QUALFLOW_WORKSPACE",
        help="Workspace folder (holds qualflow.toml and data/; made by `qualflow init`).",
        callback=_workspace_callback,
    ),
]
NewWorkspaceOption = Annotated[
    Path,
    typer.Option(
        "--workspace",
        "-w",
        envvar="QUALFLOW_WORKSPACE",
        help="Workspace folder (created when missing).",
    ),
]
"""For the commands that create their workspace (``demo``)."""


def offline_defaults() -> None:
    """Keep Prefect and friends from phoning home unless the user said otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary local server can take a while to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


EXIT_OK = 0
EXIT_FAILED = 1
"""Nothing was done: the run failed, every file failed, or the command could not start."""
EXIT_PARTIAL = 3
"""Partly done: some passages or files failed or are left uncoded (a budget stop too);
run the same command again to resume. (2 is the usage-error code of the CLI itself.)"""


def exit_code(status: str) -> int:
    """The exit code for a coding run's status (see docs/scheduled-runs.md)."""
    if status == "completed":
        return EXIT_OK
    if status in {"partial", "stopped_budget"}:
        return EXIT_PARTIAL
    return EXIT_FAILED


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


# ---------------------------------------------------------------------- the active codebook


ActivateOption = Annotated[
    bool | None,
    typer.Option(
        "--activate/--keep-active",
        help="Make the imported codebook the workspace's active one, or keep the active "
        "one. Default: set it when the workspace has none, else ask (on a terminal) or "
        "keep the active one and say so.",
    ),
]


def codebook_label(codebook) -> str:
    return f"'{codebook.name}' ({len(codebook.codes)} codes, version {codebook.version})"


def command_codebook(settings, store, given: str | None):
    """The codebook a command uses: ``--codebook`` if given, else the workspace's active
    codebook, else the settings' ``codebook``. Returns (codebook, where it came from)."""
    from qualflow.codebook import CodebookError, load_codebook

    try:
        if given:
            return load_codebook(given), f"--codebook {given}"
        active = store.active_codebook()
        if active is not None:
            return active, "the workspace's active codebook"
        return load_codebook(settings.codebook), (
            f"the settings' codebook ({settings.codebook}); the workspace has no active "
            "codebook (`qualflow codebook load FILE` sets one)"
        )
    except (CodebookError, FileNotFoundError) as exc:
        raise fail(f"codebook: {exc}") from exc


def require_shared_codes(store, codebook) -> None:
    """Stop before any work when the codebook shares no code with the workspace's gold
    sets or reviewed codings (coding, training or evaluating with it would be void)."""
    used = store.human_coded_codes()
    applied = {source: codes for source, codes in used.items() if codes}
    if not applied:
        return
    titles = set(codebook.titles())
    if any(titles & codes for codes in applied.values()):
        return
    sources = ", ".join(f"{source} ({len(codes)} codes)" for source, codes in applied.items())
    raise fail(
        f"codebook {codebook_label(codebook)} shares no code with this workspace's "
        f"{sources}: make the right one active (`qualflow codebook load FILE`, or "
        "`qualflow codebook use NAME` for an imported one) or pass --codebook"
    )


def codebook_source(settings, codebook) -> str:
    """A file path loading exactly this codebook, for APIs that take a codebook source.

    A stored (e.g. imported) codebook is written once to data/codebooks/VERSION.yaml.
    """
    from qualflow.codebook import load_codebook, to_yaml

    source = codebook.source
    if source and Path(source).is_file():
        try:
            if load_codebook(source).version == codebook.version:
                return source
        except (ValueError, OSError):
            pass
    folder = settings.data_dir / "codebooks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{codebook.version}.yaml"
    if not path.is_file():
        path.write_text(to_yaml(codebook), encoding="utf-8")
    if load_codebook(path).version != codebook.version:
        raise fail(f"{path}: does not reproduce codebook version {codebook.version}")
    return str(path)


def adopt_codebook(store, version: str, *, activate: bool | None) -> None:
    """After an import that brought a codebook: make it active when the workspace has
    none; otherwise follow ``activate``, ask on a terminal, or keep the active one.
    Always says which codebook is active afterwards."""
    import sys

    imported = store.codebook(version)
    current = store.active_codebook()
    if imported is None:
        return
    if current is not None and current.version == version:
        console.print(f"active codebook: {codebook_label(imported)} (unchanged)", markup=False)
        return
    if current is None or activate is True:
        store.set_active_codebook(version)
        console.print(f"active codebook is now {codebook_label(imported)}", markup=False)
        return
    if activate is None and sys.stdin.isatty():
        question = (
            f"Make {codebook_label(imported)} the active codebook "
            f"instead of {codebook_label(current)}?"
        )
        if typer.confirm(question, default=False):
            store.set_active_codebook(version)
            console.print(f"active codebook is now {codebook_label(imported)}", markup=False)
            return
    console.print(
        f"active codebook stays {codebook_label(current)}; the imported "
        f"{codebook_label(imported)} is stored but not active (make it active with "
        f"--activate or `qualflow codebook use {version}`)",
        markup=False,
    )
