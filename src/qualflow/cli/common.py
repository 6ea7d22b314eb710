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
