"""Retrieval commands: build or reuse the codebook index, retrieve candidate codes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from qualflow.cli.common import (
    WorkspaceOption,
    command_codebook,
    console,
    fail,
    require_shared_codes,
)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("index")(index)
    app.command("retrieve")(retrieve)


CodebookOption = Annotated[
    str | None,
    typer.Option("--codebook", "-c", help="Codebook name or file (default: the active codebook)."),
]


def _open_index(workspace: Path, codebook_source: str | None):
    from qualflow.embeddings import EmbeddingError
    from qualflow.index import CodeIndex
    from qualflow.privacy import PrivacyError
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    settings = load_settings(workspace)
    store = open_store(settings)
    try:
        codebook, _ = command_codebook(settings, store, codebook_source)
        require_shared_codes(store, codebook)
    finally:
        store.close()
    started = time.perf_counter()
    try:
        code_index = CodeIndex.ensure(codebook, settings)
    except (EmbeddingError, PrivacyError, ValueError) as exc:
        raise fail(str(exc)) from exc
    return code_index, time.perf_counter() - started


def index(
    workspace: WorkspaceOption = Path("."),
    codebook: CodebookOption = None,
) -> None:
    """Build the codebook's vector index (or reuse it when the version is unchanged)."""
    code_index, seconds = _open_index(workspace, codebook)
    cb = code_index.codebook
    console.print(f"codebook {cb.name}  version {cb.version}  codes {len(cb.codes)}")
    console.print(f"collection {code_index.name}  embeddings {code_index.model}")
    console.print(f"ready in {seconds:.2f}s")


def retrieve(
    text: Annotated[str, typer.Argument(help="Passage text to find candidate codes for.")],
    k: Annotated[
        int | None,
        typer.Option("-k", help="Candidates to return (0 = whole codebook; default: setting)."),
    ] = None,
    previous: Annotated[
        str | None,
        typer.Option("--previous", help="Preceding turn (e.g. the interviewer's question)."),
    ] = None,
    expand_children: Annotated[
        bool, typer.Option("--expand-children", help="Add the children of retrieved codes.")
    ] = False,
    workspace: WorkspaceOption = Path("."),
    codebook: CodebookOption = None,
) -> None:
    """Print the candidate codes for a text, best first, with cosine scores."""
    from rich.table import Table

    from qualflow.settings import load_settings

    code_index, _ = _open_index(workspace, codebook)
    top = load_settings(workspace).retrieval_k if k is None else k
    query = f"{previous}\n{text}" if previous else text
    candidates = code_index.retrieve(query, top, expand_children=expand_children)
    table = Table("score", "code", "description")
    for candidate in candidates:
        description = " ".join(candidate.code.description.split())
        table.add_row(f"{candidate.score:.3f}", candidate.code.title, description[:90])
    console.print(table)
