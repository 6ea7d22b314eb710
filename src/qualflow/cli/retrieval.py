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
    text: Annotated[
        str | None,
        typer.Argument(help="Passage text to find candidate codes for (omit with --gold)."),
    ] = None,
    k: Annotated[
        str | None,
        typer.Option(
            "-k",
            help="Candidates to return (0 = whole codebook; default: setting). With --gold, "
            "a comma-separated list: 5,10,20.",
        ),
    ] = None,
    previous: Annotated[
        str | None,
        typer.Option("--previous", help="Preceding turn (e.g. the interviewer's question)."),
    ] = None,
    expand_children: Annotated[
        bool, typer.Option("--expand-children", help="Add the children of retrieved codes.")
    ] = False,
    gold: Annotated[
        list[str] | None,
        typer.Option(
            "--gold",
            help="Instead of one text: recall@k over every coded passage of this gold set "
            "(SET or SET:CODER), all k in one pass.",
        ),
    ] = None,
    with_previous: Annotated[
        bool,
        typer.Option(
            "--with-previous", help="With --gold: query = the text before the passage + it."
        ),
    ] = False,
    transcripts: Annotated[
        str | None, typer.Option(help="With --gold: only these transcripts (comma-separated).")
    ] = None,
    participants: Annotated[
        str | None, typer.Option(help="With --gold: only these participants (comma-separated).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --gold: print JSON.")] = False,
    workspace: WorkspaceOption = Path("."),
    codebook: CodebookOption = None,
) -> None:
    """Print the candidate codes for a text, best first, with cosine scores; or, with
    --gold, recall@k of retrieval over a gold set's coded passages."""
    ks = _ks(k)
    if gold:
        _recall(workspace, codebook, gold, ks, with_previous, transcripts, participants, as_json)
        return
    if not text:
        raise fail("give a text to retrieve codes for, or --gold SET to measure recall@k")
    if len(ks) > 1:
        raise fail("-k: one value for a single text (several only with --gold)")
    from rich.table import Table

    from qualflow.settings import load_settings

    code_index, _ = _open_index(workspace, codebook)
    top = load_settings(workspace).retrieval_k if not ks else ks[0]
    query = f"{previous}\n{text}" if previous else text
    candidates = code_index.retrieve(query, top, expand_children=expand_children)
    table = Table("score", "code", "description")
    for candidate in candidates:
        description = " ".join(candidate.code.description.split())
        table.add_row(f"{candidate.score:.3f}", candidate.code.title, description[:90])
    console.print(table)


def _ks(value: str | None) -> list[int]:
    if value is None:
        return []
    try:
        ks = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise fail(f"-k {value!r}: whole numbers, comma-separated (5,10,20)") from exc
    if not ks or any(v < 0 for v in ks):
        raise fail(f"-k {value!r}: whole numbers >= 0 (0 = the whole codebook)")
    return ks


def _recall(
    workspace: Path,
    codebook_source: str | None,
    gold: list[str],
    ks: list[int],
    with_previous: bool,
    transcripts: str | None,
    participants: str | None,
    as_json: bool,
) -> None:
    import json

    from qualflow.retrieval_eval import evaluate_retrieval
    from qualflow.settings import load_settings
    from qualflow.store import open_store
    from qualflow.training import TrainingError, TrainingSources

    code_index, _ = _open_index(workspace, codebook_source)
    book = code_index.codebook
    sources = TrainingSources(
        gold=gold,
        transcripts=[t.strip() for t in (transcripts or "").split(",") if t.strip()],
        participants=[p.strip() for p in (participants or "").split(",") if p.strip()],
    )
    ks = ks or [5, 10, 20, 0]
    store = open_store(load_settings(workspace))
    started = time.perf_counter()
    try:
        result = evaluate_retrieval(
            store, code_index, book, sources, ks, with_previous=with_previous
        )
    except (TrainingError, ValueError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    seconds = time.perf_counter() - started
    if as_json:
        console.print_json(json.dumps({**result.to_dict(), "seconds": round(seconds, 2)}))
        return
    query = "text before the passage + passage" if with_previous else "passage"
    console.print(
        f"recall@k of {book.name} ({len(book.codes)} codes, version {book.version}) over "
        f"{result.passages} coded passages ({result.pairs} codes) of "
        f"{len(result.transcripts)} transcripts, {', '.join(result.sources)}; query = {query}; "
        f"{seconds:.1f}s (k = 0: whole codebook)",
        markup=False,
        highlight=False,
    )
    console.print(result.markdown(), markup=False, highlight=False)
