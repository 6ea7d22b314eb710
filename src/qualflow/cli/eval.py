"""Agreement commands: ``qualflow eval`` runs experiments; ``qualflow gold`` manages gold sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qualflow.cli.common import (
    ActivateOption,
    WorkspaceOption,
    adopt_codebook,
    codebook_label,
    command_codebook,
    console,
    err_console,
    fail,
    require_shared_codes,
)

gold_app = typer.Typer(help="Gold sets: codings to measure agreement against.")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("eval")(eval_command)
    app.add_typer(gold_app, name="gold")


def _settings(workspace: Path):
    from qualflow.settings import load_settings

    return load_settings(workspace)


def eval_command(
    experiments: Annotated[
        list[str] | None, typer.Argument(help="Experiment names (default: all).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--experiments", "-f", help="Experiments YAML (default eval/experiments.yaml)."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for <name>.json/.html/.md.")
    ] = Path("eval/results"),
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="Evaluate in this workspace's store; default: a scratch workspace per "
            "experiment under OUT/workspaces/ (kept, so re-runs are incremental).",
        ),
    ] = None,
    n_boot: Annotated[
        int | None, typer.Option(help="Bootstrap resamples (overrides the experiment).")
    ] = None,
    min_share: Annotated[
        float | None,
        typer.Option(
            help="Span level: share of a reference highlight one span of the same code must "
            "cover for it to count as found (overrides the experiment's min_share; default 0.5)."
        ),
    ] = None,
    no_prepare: Annotated[
        bool, typer.Option("--no-prepare", help="Skip ingest, gold import and coder runs.")
    ] = False,
    list_only: Annotated[bool, typer.Option("--list", help="List the experiments.")] = False,
    allow_overlap: Annotated[
        bool,
        typer.Option(
            "--allow-overlap",
            help="Report a coder that learned from the reference's transcripts (refused "
            "by default); the report then carries the overlap as a warning in its header.",
        ),
    ] = False,
) -> None:
    """Run agreement experiments: results JSON, an HTML report and a Markdown summary, with
    agreement at span, sentence and turn level."""
    from qualflow.evaluate import EvalError, load_experiments, run_experiment
    from qualflow.store import open_store

    try:
        defined = load_experiments(file)
    except EvalError as exc:
        raise fail(str(exc)) from exc
    if list_only:
        for name, e in defined.items():
            console.print(f"{name}: {e.coder} vs {e.reference} — {e.description}", markup=False)
        return
    names = experiments or list(defined)
    unknown = [n for n in names if n not in defined]
    if unknown:
        raise fail(f"unknown experiments {unknown}; defined: {sorted(defined)}")
    failed = 0
    for name in names:
        exp = defined[name]
        if n_boot is not None:
            exp.n_boot = n_boot
        if min_share is not None:
            exp.min_share = min_share
        if allow_overlap:
            exp.allow_overlap = True
        ws = workspace or out / "workspaces" / name
        settings = _settings(ws)
        store = open_store(settings)
        try:
            _experiment_codebook(exp, store, in_user_workspace=workspace is not None)
            result = run_experiment(exp, store, settings, out_dir=out, prepare_first=not no_prepare)
        except (EvalError, ValueError, FileNotFoundError) as exc:
            err_console.print(f"{name} failed: {exc}", markup=False, style="bold red")
            failed += 1
            continue
        finally:
            store.close()
        console.print(result.markdown, markup=False, highlight=False)
        console.print(f"wrote {result.json_path}, {result.html_path}, {result.markdown_path}")
    if failed:
        raise typer.Exit(1)


def _experiment_codebook(experiment, store, *, in_user_workspace: bool) -> None:
    """An experiment names its codebook; check it against the workspace before any work.

    In the user's workspace a codebook sharing no code with its gold or reviewed codings
    stops the experiment, and one other than the active codebook is named; a scratch
    workspace takes the experiment's codebook as its active one.
    """
    from qualflow.codebook import load_codebook

    book = load_codebook(experiment.codebook)
    require_shared_codes(store, book)
    active = store.active_codebook()
    if active is None:
        if not in_user_workspace:
            store.set_active_codebook(book)
        return
    if active.version != book.version:
        console.print(
            f"{experiment.name}: evaluates with its own codebook {codebook_label(book)}; "
            f"the workspace's active codebook is {codebook_label(active)}",
            markup=False,
        )


@gold_app.command("import")
def gold_import(
    file: Annotated[Path, typer.Argument(help="JSONL gold file.")],
    gold_set: Annotated[str, typer.Option("--set", help="Gold set name.")],
    workspace: WorkspaceOption = Path("."),
    coder: Annotated[
        str | None, typer.Option(help="Coder for records without a 'coder' field.")
    ] = None,
    codebook: Annotated[
        str | None,
        typer.Option(help="Codebook to check codes against (default: the active codebook)."),
    ] = None,
    segmentation: Annotated[
        str | None,
        typer.Option(help="Passages that records given by text name (default: settings)."),
    ] = None,
    min_overlap: Annotated[
        float,
        typer.Option(help="Share of a sentence spans must cover to count it as coded (report)."),
    ] = 0.5,
    activate: ActivateOption = None,
) -> None:
    """Import a JSONL gold set as spans (bad lines are reported by number; the rest is
    imported).

    Its codebook becomes the workspace's active one when there is none yet."""
    from qualflow.gold import GoldError, import_gold
    from qualflow.store import open_store

    settings = _settings(workspace)
    store = open_store(settings)
    try:
        book, _ = command_codebook(settings, store, codebook)
        report = import_gold(
            store,
            file,
            gold_set,
            coder=coder,
            codebook=book,
            segmentation=segmentation or settings.segmentation,
            min_overlap=min_overlap,
        )
        for p in report.problems:
            err_console.print(p, markup=False, highlight=False, style="yellow")
        console.print(report.summary(), markup=False, highlight=False)
        adopt_codebook(store, book.version, activate=activate)
    except (GoldError, ValueError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()


@gold_app.command("delete")
def gold_delete(
    gold_set: Annotated[str, typer.Argument(help="Gold set name.")],
    workspace: WorkspaceOption = Path("."),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a gold set: every coder's codings in it (transcripts, imported highlights,
    runs and review decisions stay)."""
    from qualflow.store import open_store

    store = open_store(_settings(workspace))
    try:
        coders = store.gold(gold_set)
        if not coders:
            have = ", ".join(sorted(store.gold_sets())) or "none"
            raise fail(f"no gold set '{gold_set}' in this workspace (gold sets: {have})")
        parts = ", ".join(f"{c} ({len(cd)} passages)" for c, cd in sorted(coders.items()))
        if not yes and not typer.confirm(f"Delete gold set '{gold_set}': {parts}?"):
            raise typer.Exit(1)
        rows = store.delete_gold_set(gold_set)
    finally:
        store.close()
    console.print(f"deleted gold set '{gold_set}' ({rows} coded spans: {parts})", markup=False)


@gold_app.command("list")
def gold_list(
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Gold sets in the store with their coders and passage counts."""
    from qualflow.store import open_store

    store = open_store(_settings(workspace))
    try:
        for name in sorted(store.gold_sets()):
            coders = store.gold(name)
            parts = ", ".join(
                f"{c} ({len(cd)})"
                + (" [constructed example data]" if store.gold_origin(name, c) else "")
                for c, cd in sorted(coders.items())
            )
            console.print(f"{name}: {parts}", markup=False, highlight=False)
    finally:
        store.close()


@gold_app.command("export")
def gold_export(
    gold_set: Annotated[str, typer.Argument(help="Gold set name.")],
    file: Annotated[Path, typer.Argument(help="JSONL file to write.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Write a gold set as JSONL spans (transcript, offsets, text, codes, coder)."""
    from qualflow.gold import export_gold
    from qualflow.store import open_store

    store = open_store(_settings(workspace))
    try:
        n = export_gold(store, gold_set, file)
    finally:
        store.close()
    console.print(f"wrote {n} records to {file}")
