"""``qualflow code``: propose codes for transcripts through the library, without Prefect.

Same pipeline and guarantees as ``qualflow run`` (incremental, resumable, failures
recorded, budgets), minus orchestration: no Prefect server, no artifacts, no retries
beyond the coder's own. Use it for quick work and scripts; use ``qualflow run`` /
``qualflow serve`` for scheduled, observable runs.
"""

from __future__ import annotations

from pathlib import Path

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
from qualflow.cli.runs import (
    BatchOption,
    CodebookOption,
    CoderOption,
    FilesArgument,
    InboxOption,
    MaxCostOption,
    MaxTokensOption,
    end_leftovers,
    progress_bar,
    show_summary,
)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("code")(code)


def code(
    files: FilesArgument = None,
    inbox: InboxOption = None,
    coder: CoderOption = "llm",
    codebook: CodebookOption = None,
    batch_size: BatchOption = None,
    max_tokens: MaxTokensOption = None,
    max_cost: MaxCostOption = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Ingest transcripts (files, --inbox, or the workspace inbox) and propose codes.

    Without files or an inbox, codes every stored transcript's uncoded passages.
    """
    offline_defaults()
    from qualflow import pipeline
    from qualflow.coders.factory import CoderError
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    overrides: dict = {}
    if max_tokens is not None:
        overrides["max_tokens_per_run"] = max_tokens
    if max_cost is not None:
        overrides["max_cost_per_run"] = max_cost
    end_leftovers(workspace)
    settings = load_settings(workspace, **overrides)
    sources = [f.resolve() for f in files or []] or pipeline.sources_of(settings, inbox)
    store = open_store(settings)
    try:
        book, origin = command_codebook(settings, store, codebook)
        require_shared_codes(store, book)
        console.print(f"codebook: {codebook_label(book)}, {origin}", markup=False)
        with progress_bar() as update:
            summary = pipeline.code_paths(
                settings,
                store,
                paths=sources,
                coder=coder,
                codebook=codebook_source(settings, book),
                progress=update,
                batch_size=batch_size,
            )
        learned_from = _learned_from(store, summary.run_id)
    except (CoderError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    status = show_summary(summary.model_dump(mode="json"))
    for line in learned_from:
        console.print(line, markup=False, highlight=False)
    if exit_code(status):
        raise typer.Exit(exit_code(status))


def _learned_from(store, run_id: int | None) -> list[str]:
    """What the run's coder learned from and was shown, as recorded on the run."""
    from qualflow.training import describe_provenance

    return describe_provenance(store.run_params(run_id)) if run_id is not None else []
