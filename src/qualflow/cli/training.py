"""``qualflow train``: train a coder from named human codings and save it under a name.

Nothing trains implicitly: ``qualflow code --coder learned:NAME`` codes with a coder
trained here, and every run records what that coder learned from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qualflow.cli.common import WorkspaceOption, console, fail

train_app = typer.Typer(
    help="Train coders from named gold sets or review decisions (nothing trains implicitly).",
    no_args_is_help=True,
)

GoldOption = Annotated[
    list[str] | None,
    typer.Option(
        "--gold",
        help="Gold set to learn from (SET or SET:CODER); repeat for several, first wins.",
    ),
]
DecisionsOption = Annotated[
    bool, typer.Option("--decisions", help="Also learn from reviewers' finished decisions.")
]
UntilOption = Annotated[
    str | None,
    typer.Option("--until", help="Only decisions made up to this ISO time (UTC if no offset)."),
]
TranscriptsOption = Annotated[
    str | None,
    typer.Option("--transcripts", help="Comma-separated transcript names to learn from only."),
]
ParticipantsOption = Annotated[
    str | None,
    typer.Option(
        "--participants", help="Comma-separated participant ids to learn from only (P1,P2)."
    ),
]
NameOption = Annotated[str, typer.Option("--name", help="Name to save the trained coder under.")]
CodebookOption = Annotated[
    str | None,
    typer.Option(
        "--codebook",
        help="Codebook to train for: a file, a shipped name, or a codebook stored in the "
        "workspace (name or version). Default: the workspace's active codebook, else "
        "the `codebook` setting.",
    ),
]


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(train_app, name="train")


def _sources(
    gold: list[str] | None,
    decisions: bool,
    until: str | None,
    transcripts: str | None,
    participants: str | None,
):
    from qualflow.training import TrainingSources, parse_time

    if until and not decisions:
        raise fail("--until applies to --decisions: add --decisions")
    if transcripts and participants:
        raise fail("give --transcripts or --participants, not both")
    return TrainingSources(
        gold=list(gold or []),
        decisions=decisions,
        until=parse_time(until) if until else None,
        transcripts=_split(transcripts),
        participants=_split(participants),
    )


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _open(workspace: Path):
    from qualflow.settings import CONFIG_FILE, load_settings
    from qualflow.store import open_store

    if not (workspace / CONFIG_FILE).is_file():
        raise fail(f"{workspace}: not a qualflow workspace (run `qualflow init {workspace}`)")
    settings = load_settings(workspace)
    return settings, open_store(settings)


def resolve_codebook(store, settings, source: str | None):
    """A codebook stored in the workspace (by version or name), else a file or shipped
    name; without ``--codebook``, the workspace's active codebook, else the settings'."""
    from qualflow.codebook import CodebookError, load_codebook

    if source:
        stored = store.codebook(source) or store.codebook(name=source)
        if stored is not None:
            return stored
    else:
        active = store.active_codebook()
        if active is not None:
            return active
    try:
        return load_codebook(source or settings.codebook)
    except (CodebookError, FileNotFoundError) as exc:
        raise fail(f"codebook {source or settings.codebook!r}: {exc}") from exc


def _report(trained, kind: str) -> None:
    p = trained.provenance
    verb = "reused (same labels)" if trained.reused else "trained"
    scope = f" ({p['filter']})" if "filter" in p else ""
    console.print(
        f"{kind}:{trained.name} {verb} on {p['units']} passages of {len(p['transcripts'])} "
        f"transcripts from {', '.join(p['sources'])}{scope}",
        markup=False,
        highlight=False,
    )
    console.print(f"  transcripts: {', '.join(p['transcripts'])}", markup=False, highlight=False)
    console.print(f"  label hash {p['label_hash']}; {p['note']}", markup=False, highlight=False)
    console.print(f"  model {trained.coder.model}", markup=False, highlight=False)
    console.print(f"code with: qualflow code --coder {kind}:{trained.name}", markup=False)


@train_app.command("learned")
def train_learned_cmd(
    name: NameOption,
    gold: GoldOption = None,
    decisions: DecisionsOption = False,
    until: UntilOption = None,
    transcripts: TranscriptsOption = None,
    participants: ParticipantsOption = None,
    codebook: CodebookOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train again even when the labels are unchanged.")
    ] = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Train the learned coder (logistic regression on MiniLM) and save it as learned:NAME."""
    from qualflow.training import TrainingError, train_learned

    settings, store = _open(workspace)
    try:
        sources = _sources(gold, decisions, until, transcripts, participants)
        book = resolve_codebook(store, settings, codebook)
        trained = train_learned(store, settings, book, sources, name, reuse=not force)
    except TrainingError as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    _report(trained, "learned")


@train_app.command("similarity")
def train_similarity_cmd(
    name: NameOption,
    gold: GoldOption = None,
    decisions: DecisionsOption = False,
    until: UntilOption = None,
    transcripts: TranscriptsOption = None,
    participants: ParticipantsOption = None,
    codebook: CodebookOption = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Calibrate the similarity coder's threshold and max codes; save as similarity:NAME."""
    from qualflow.embeddings import EmbeddingError
    from qualflow.privacy import PrivacyError
    from qualflow.training import TrainingError, calibrate_similarity

    settings, store = _open(workspace)
    try:
        sources = _sources(gold, decisions, until, transcripts, participants)
        book = resolve_codebook(store, settings, codebook)
        trained = calibrate_similarity(store, settings, book, sources, name)
    except (TrainingError, EmbeddingError, PrivacyError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    _report(trained, "similarity")


@train_app.command("list")
def train_list_cmd(workspace: WorkspaceOption = Path(".")) -> None:
    """The trained coders of the workspace and what each learned from."""
    from qualflow.training import list_trained

    settings, store = _open(workspace)
    store.close()
    trained = list_trained(settings)
    for meta in trained:
        t = meta.get("training") or {}
        scope = f" ({t['filter']})" if t.get("filter") else ""
        console.print(
            f"{meta['kind']}:{meta['name']}  codebook {meta.get('codebook', '')} "
            f"{meta.get('codebook_version', '')}  {t.get('units', '?')} passages of "
            f"{len(t.get('transcripts', []))} transcripts from "
            f"{', '.join(t.get('sources', []))}{scope}  trained {meta.get('trained_at', '')}",
            markup=False,
            highlight=False,
        )
    if not trained:
        console.print("no trained coders (qualflow train learned|similarity --gold SET --name N)")
