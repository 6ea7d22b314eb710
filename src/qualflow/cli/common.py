"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

WorkspaceOption = Annotated[
    Path,
    typer.Option(
        "--workspace",
        "-w",
        envvar="QUALFLOW_WORKSPACE",
        help="Workspace folder (holds qualflow.toml and data/).",
    ),
]


def offline_defaults() -> None:
    """Keep Prefect and friends from phoning home unless the user said otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary local server can take a while to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


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
