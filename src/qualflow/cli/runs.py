"""``qualflow run`` (one coding flow run in the foreground) and ``qualflow serve``
(the scheduled deployments of prefect.yaml, served from one process).

Prefect is imported inside the commands, after ``offline_defaults()``, so the rest of
the CLI starts fast and Prefect never phones home unless the user asks it to.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from qualflow.cli.common import (
    WorkspaceOption,
    codebook_label,
    codebook_source,
    command_codebook,
    console,
    exit_code,
    fail,
    offline_defaults,
    require_shared_codes,
)

CoderOption = Annotated[
    str,
    typer.Option(
        "--coder",
        "-c",
        help="llm, similarity, learned, or an importable 'module:callable' returning a coder.",
    ),
]
CodebookOption = Annotated[
    str | None,
    typer.Option("--codebook", help="Codebook name or file (default: the active codebook)."),
]
InboxOption = Annotated[
    Path | None,
    typer.Option("--inbox", help="Folder of transcripts (default: the workspace's inbox)."),
]
FilesArgument = Annotated[
    list[Path] | None, typer.Argument(help="Transcript files or folders (instead of --inbox).")
]
BatchOption = Annotated[
    int | None, typer.Option("--batch-size", help="Passages per batch (default from settings).")
]
MaxTokensOption = Annotated[
    int | None, typer.Option("--max-tokens", help="Token budget of this run (0 = none).")
]
MaxCostOption = Annotated[
    float | None, typer.Option("--max-cost", help="USD budget of this run (0 = none).")
]


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("run")(run)
    app.command("serve")(serve)


# ---------------------------------------------------------------------- locating flows


def repo_root() -> Path:
    from qualflow.resources import project_dir

    return project_dir("flows").parent


def load_flow(entrypoint: str) -> Any:
    """A flow from ``path/to/file.py:function`` (relative to the qualflow checkout)."""
    from prefect.flows import load_flow_from_entrypoint

    path, _, name = entrypoint.partition(":")
    full = Path(path) if Path(path).is_absolute() else repo_root() / path
    return load_flow_from_entrypoint(f"{full}:{name}")


# ---------------------------------------------------------------------- run


def run(
    files: FilesArgument = None,
    inbox: InboxOption = None,
    coder: CoderOption = "llm",
    codebook: CodebookOption = None,
    batch_size: BatchOption = None,
    max_tokens: MaxTokensOption = None,
    max_cost: MaxCostOption = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Run the coding flow once, in the foreground, through Prefect.

    Same guarantees as the scheduled run: incremental, resumable, failures recorded,
    budget respected. Without PREFECT_API_URL Prefect starts a temporary local server.
    """
    offline_defaults()
    workspace = workspace.resolve()
    end_leftovers(workspace)
    codebook = _run_codebook(workspace, codebook)
    flow = load_flow("flows/coding.py:code_transcripts")
    with foreground_api(), progress_bar() as update:
        flow.fn.__globals__["progress_hook"] = update
        try:
            state = flow(
                inbox=str(inbox.resolve()) if inbox else None,
                files=[str(f.resolve()) for f in files] if files else None,
                workspace=str(workspace),
                codebook=codebook,
                coder=coder,
                batch_size=batch_size,
                max_tokens=max_tokens,
                max_cost=max_cost,
                return_state=True,
            )
            result = flow.fn.__globals__["summary_of"](state)
        except Exception as exc:
            raise fail(f"coding run failed: {exc}") from exc
        finally:
            flow.fn.__globals__["progress_hook"] = None
    status = show_summary(result)
    if exit_code(status):
        raise typer.Exit(exit_code(status))


def end_leftovers(workspace: Path) -> None:
    """End processes a killed qualflow left running for this workspace (pid files)."""
    from qualflow import processes
    from qualflow.settings import load_settings

    folder = processes.pid_dir(load_settings(workspace).data_dir)
    for record in processes.reap_leftovers(folder):
        console.print(
            f"[yellow]ended a left-over {record.get('role')} process (pid {record['pid']}) "
            "of a qualflow process that was killed[/]"
        )


def _run_codebook(workspace: Path, given: str | None) -> str:
    """The codebook source the run uses (given, the active one, or the settings'),
    checked against the workspace's gold and reviewed codings before any work."""
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(workspace)
    store = open_store(settings)
    try:
        book, origin = command_codebook(settings, store, given)
        require_shared_codes(store, book)
        console.print(f"codebook: {codebook_label(book)}, {origin}", markup=False)
        return codebook_source(settings, book)
    finally:
        store.close()


@contextmanager
def progress_bar() -> Iterator[Any]:
    """A rich progress bar driven by ``update(done, total)`` (passages)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("coding passages"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task_id = bar.add_task("coding", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task_id, completed=done, total=total)

    with bar:
        yield update


def show_summary(result: dict) -> str:
    """Print a run summary and what to do next; returns the run's status."""
    from rich.markdown import Markdown

    from qualflow.pipeline import RunSummary, render_markdown

    summary = RunSummary.model_validate(result)
    console.print(Markdown(render_markdown(summary)))
    if summary.status == "stopped_budget":
        console.print("[yellow]Budget reached: run the same command again to resume.[/]")
    elif summary.status == "partial":
        console.print(
            "[yellow]Partly done: some passages failed or are left uncoded (see failures); "
            "run the same command again to retry them.[/]"
        )
    elif summary.status == "failed":
        console.print(
            "[red]Run failed: nothing was coded (see failures). Fix the cause, then run the "
            "same command again.[/]"
        )
    return summary.status


# ---------------------------------------------------------------------- serve


def serve(
    workspace: WorkspaceOption = Path("."),
    coding_cron: Annotated[
        str | None, typer.Option(help="Cron of the coding run (default: prefect.yaml).")
    ] = None,
    report_cron: Annotated[
        str | None, typer.Option(help="Cron of the agreement report (default: prefect.yaml).")
    ] = None,
    port: Annotated[
        int,
        typer.Option(
            help="Port of the local Prefect server started when PREFECT_API_URL is unset "
            "(0 = a free port)."
        ),
    ] = 4200,
    limit: Annotated[
        int, typer.Option(help="Flow runs at once in this process (0 = no limit).")
    ] = 1,
) -> None:
    """Serve the coding and report deployments of prefect.yaml on their schedules.

    One process: when PREFECT_API_URL is unset it also runs a local Prefect server
    (UI and scheduler) on 127.0.0.1; otherwise it registers with that server. Stops
    cleanly on SIGTERM or Ctrl-C.
    """
    from qualflow import processes

    offline_defaults()
    workspace = workspace.resolve()
    end_leftovers(workspace)
    specs = deployment_specs(workspace, coding_cron=coding_cron, report_cron=report_cron)
    # Prefect's flow-run processes watch this process and stop when it is gone.
    os.environ[processes.PARENT_ENV] = str(os.getpid())
    with api_server(port) as url:
        from prefect import serve as prefect_serve
        from prefect.schedules import Cron

        deployments = []
        for s in specs:
            flow = load_flow(s["entrypoint"])
            deployments.append(
                flow.to_deployment(
                    name=s["name"],
                    schedules=[Cron(s["cron"], timezone=s["timezone"])],
                    parameters=s["parameters"],
                    description=s["description"],
                    tags=s["tags"],
                )
            )
            console.print(f"  {flow.name}/{s['name']}: cron '{s['cron']}' ({s['timezone']})")
        console.print(f"Serving {len(deployments)} deployments against {url}")
        prefect_serve(*deployments, limit=limit or None, print_starting_message=False)
    console.print("qualflow serve stopped.")


def deployment_specs(
    workspace: Path, *, coding_cron: str | None = None, report_cron: str | None = None
) -> list[dict[str, Any]]:
    """The deployments of prefect.yaml, with the workspace parameter set."""
    import yaml

    path = repo_root() / "prefect.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    overrides = {"code_transcripts": coding_cron, "agreement_report": report_cron}
    specs = []
    for d in config.get("deployments", []):
        entrypoint = d["entrypoint"]
        func = entrypoint.rpartition(":")[2]
        crons = [s for s in d.get("schedules") or [] if s.get("cron")]
        cron = overrides.get(func) or (crons[0]["cron"] if crons else None)
        if not cron:
            raise fail(f"{path}: deployment '{d.get('name')}' has no cron schedule")
        specs.append(
            {
                "name": d["name"],
                "flow": func,
                "entrypoint": entrypoint,
                "cron": cron,
                "timezone": (crons[0].get("timezone") if crons else None) or "UTC",
                "parameters": {**(d.get("parameters") or {}), "workspace": str(workspace)},
                "description": d.get("description"),
                "tags": d.get("tags") or [],
            }
        )
    return specs


@contextmanager
def api_server(port: int, *, ephemeral: bool = False) -> Iterator[str]:
    """The Prefect API to use: PREFECT_API_URL if set, else a server in this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    server = _start_server(port, ephemeral=ephemeral)
    os.environ["PREFECT_API_URL"] = url  # flow-run subprocesses report here too
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _stop_server(server)


@contextmanager
def foreground_api() -> Iterator[str]:
    """The Prefect API of ``qualflow run``: PREFECT_API_URL if set, else a temporary
    API server in a thread of this process.

    Prefect's own temporary server is a separate process that a SIGKILL of
    ``qualflow run`` left running for good; a thread dies with the process. The
    server is stopped at interpreter exit, after Prefect has flushed its logs and
    events to it (Prefect drains those in threading's exit hooks, which run first).
    """
    import atexit

    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server = _start_server(port, ephemeral=True)
    atexit.register(_stop_server, server, 5, force=True)
    os.environ["PREFECT_API_URL"] = url
    with temporary_settings({PREFECT_API_URL: url}):
        yield url


def _stop_server(server: Any, timeout: float = 20, *, force: bool = False) -> None:
    """Stop a server of ``_start_server``; ``force``: without waiting for the open
    keep-alive connections of Prefect's clients (at exit nobody uses them any more)."""
    if force:  # uvicorn logs the cancelled lifespan task of a forced stop as an ERROR
        import logging

        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    server.should_exit = True
    server.force_exit = force
    server_thread = getattr(server, "_qualflow_thread", None)
    if server_thread is not None:
        server_thread.join(timeout=timeout)


def _start_server(port: int, *, ephemeral: bool = False) -> Any:
    """Prefect's API on 127.0.0.1, in a thread: with UI and services (scheduler
    included), or without them (``ephemeral``, for one foreground run)."""
    import uvicorn
    from prefect.server.api.server import create_app

    config = uvicorn.Config(
        app=create_app(ephemeral=ephemeral, final=True),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="prefect-server", daemon=True)
    thread.start()
    server._qualflow_thread = thread  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise fail(f"the local Prefect server did not start on 127.0.0.1:{port}")
        time.sleep(0.1)
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
