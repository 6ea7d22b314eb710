"""Interoperability commands: ``qualflow import ...`` and ``qualflow export ...``.

Imports: Taguette (project database or CSV exports), REFI-QDA projects (.qdpx) and
codebooks (.qdc). Exports: REFI-QDA, a Taguette codebook CSV, the paper tables,
proposals and decisions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from qualflow.cli.common import (
    ActivateOption,
    WorkspaceOption,
    adopt_codebook,
    console,
    err_console,
    fail,
)

import_app = typer.Typer(
    help="Bring coded projects in from Taguette and REFI-QDA tools (NVivo, ATLAS.ti, ...).",
    no_args_is_help=True,
)
export_app = typer.Typer(
    help="Write REFI-QDA files, paper tables, proposals and decisions.", no_args_is_help=True
)

GoldSetOption = Annotated[
    str | None, typer.Option("--gold-set", help="Gold set to store the codings in.")
]
SegmentationOption = Annotated[
    str | None, typer.Option(help="sentence | turn | window:N (default from settings).")
]
MinOverlapOption = Annotated[
    float,
    typer.Option(help="Share of a passage a highlight must cover to code it (see docs)."),
]
NoValidateOption = Annotated[
    bool, typer.Option("--no-validate", help="Skip the REFI-QDA schema check.")
]


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.add_typer(import_app, name="import")
    app.add_typer(export_app, name="export")


def _open(workspace: Path):
    from qualflow.settings import CONFIG_FILE, load_settings
    from qualflow.store import open_store

    if not (workspace / CONFIG_FILE).is_file():
        raise fail(f"{workspace}: not a qualflow workspace (run `qualflow init {workspace}`)")
    settings = load_settings(workspace)
    return settings, open_store(settings)


def _schema_dir(settings, no_validate: bool):
    from qualflow.exchange.refiqda import RefiError, find_schema_dir

    if no_validate:
        return None
    configured = settings.refi_schema_dir
    if configured is not None and not configured.is_absolute():
        configured = settings.workspace / configured  # relative to the workspace
    try:
        return find_schema_dir(configured)
    except RefiError as exc:
        raise fail(escape(str(exc))) from exc


def _notices(notices: list[str], problems: list[str] = (), limit: int = 20) -> None:
    for n in notices[:limit]:
        err_console.print(f"[yellow]notice:[/] {escape(n)}")
    if len(notices) > limit:
        err_console.print(f"[yellow]notice:[/] ... and {len(notices) - limit} more")
    for p in problems[:limit]:
        err_console.print(f"[red]problem:[/] {escape(p)}")
    if len(problems) > limit:
        err_console.print(f"[red]problem:[/] ... and {len(problems) - limit} more")


# ---------------------------------------------------------------------- import


@import_app.command("taguette")
def import_taguette_cmd(
    path: Annotated[Path, typer.Argument(help="Taguette project .sqlite3, or highlights CSV.")],
    workspace: WorkspaceOption = Path("."),
    codebook_csv: Annotated[
        Path | None, typer.Option("--codebook", help="Taguette codebook CSV (with a CSV import).")
    ] = None,
    gold_set: GoldSetOption = None,
    segmentation: SegmentationOption = None,
    min_overlap: MinOverlapOption = 0.5,
    project_id: Annotated[
        int | None, typer.Option(help="Project id, when the database holds several.")
    ] = None,
    coder: Annotated[
        str, typer.Option(help="Coder name for a CSV import (the CSV does not say).")
    ] = "taguette",
    activate: ActivateOption = None,
) -> None:
    """Import a Taguette project: documents, tags as a codebook, highlights as gold codings."""
    from qualflow.exchange.taguette import TaguetteError, import_taguette, import_taguette_csv
    from qualflow.segment import study_segmenter

    settings, store = _open(workspace)
    mode = segmentation or settings.segmentation
    try:
        if path.suffix.lower() == ".csv":
            result = import_taguette_csv(
                store,
                path,
                codebook_csv=codebook_csv,
                segmentation=mode,
                gold_set=gold_set,
                coder=coder,
                min_overlap=min_overlap,
            )
        else:
            result = import_taguette(
                store,
                path,
                segmentation=mode,
                gold_set=gold_set,
                min_overlap=min_overlap,
                interviewer_speakers=settings.interviewer_speakers,
                code_interviewer=settings.code_interviewer,
                project_id=project_id,
                segmenter=study_segmenter(settings),
            )
        _notices(result.notices + result.untagged + result.unmatched, result.problems)
        console.print(result.summary(), markup=False)
        adopt_codebook(store, result.codebook_version, activate=activate)
    except (TaguetteError, ValueError) as exc:
        raise fail(escape(str(exc))) from exc
    finally:
        store.close()


@import_app.command("qdpx")
def import_qdpx_cmd(
    path: Annotated[Path, typer.Argument(help="REFI-QDA project file (.qdpx).")],
    workspace: WorkspaceOption = Path("."),
    gold_set: GoldSetOption = None,
    segmentation: SegmentationOption = None,
    min_overlap: MinOverlapOption = 0.5,
    lenient: Annotated[
        bool, typer.Option(help="Skip (and report) selections with offsets out of range.")
    ] = False,
    no_validate: NoValidateOption = False,
    activate: ActivateOption = None,
) -> None:
    """Import a REFI-QDA project: text sources, codebook, each user's codings as gold."""
    from qualflow.exchange.refiqda import RefiError, import_qdpx

    settings, store = _open(workspace)
    try:
        result = import_qdpx(
            store,
            path,
            schema_dir=_schema_dir(settings, no_validate),
            check_schema=not no_validate,
            segmentation=segmentation or settings.segmentation,
            gold_set=gold_set,
            min_overlap=min_overlap,
            interviewer_speakers=settings.interviewer_speakers,
            code_interviewer=settings.code_interviewer,
            strict=not lenient,
        )
        _notices(result.notices, result.problems)
        console.print(result.summary(), markup=False)
        if result.codebook_version:
            adopt_codebook(store, result.codebook_version, activate=activate)
    except (RefiError, ValueError) as exc:
        raise fail(escape(str(exc))) from exc
    finally:
        store.close()


@import_app.command("qdc")
def import_qdc_cmd(
    path: Annotated[Path, typer.Argument(help="REFI-QDA codebook file (.qdc).")],
    workspace: WorkspaceOption = Path("."),
    no_validate: NoValidateOption = False,
    activate: ActivateOption = None,
) -> None:
    """Import a REFI-QDA codebook (hierarchy as dotted titles, descriptions)."""
    from qualflow.exchange.refiqda import RefiError, import_qdc

    settings, store = _open(workspace)
    try:
        version, codebook, notices = import_qdc(
            store,
            path,
            schema_dir=_schema_dir(settings, no_validate),
            check_schema=not no_validate,
        )
        _notices(notices)
        console.print(
            f"codebook '{codebook.name}': {len(codebook.codes)} codes, version {version}",
            markup=False,
        )
        adopt_codebook(store, version, activate=activate)
    except RefiError as exc:
        raise fail(escape(str(exc))) from exc
    finally:
        store.close()


# ---------------------------------------------------------------------- export


@export_app.command("qdpx")
def export_qdpx_cmd(
    out: Annotated[Path, typer.Argument(help="File to write (.qdpx).")],
    workspace: WorkspaceOption = Path("."),
    name: Annotated[
        str | None,
        typer.Option(
            help="Project name (default: the name of the project it was imported from, "
            "else the study name)."
        ),
    ] = None,
    codebook_version: Annotated[str | None, typer.Option(help="Codebook version.")] = None,
    run: Annotated[
        list[int] | None, typer.Option("--run", help="Only these runs' proposals.")
    ] = None,
    gold_set: Annotated[
        list[str] | None, typer.Option("--gold-set", help="Only these gold sets.")
    ] = None,
    machine: Annotated[bool, typer.Option(help="Include machine codings.")] = True,
    reviewers: Annotated[bool, typer.Option(help="Include human reviewers' codings.")] = True,
    gold: Annotated[bool, typer.Option(help="Include gold coders' codings.")] = True,
    no_validate: NoValidateOption = False,
) -> None:
    """Write the study as a REFI-QDA project: each coder is a User, machine notes attached."""
    from qualflow.exchange.refiqda import RefiError, export_qdpx

    settings, store = _open(workspace)
    try:
        report = export_qdpx(
            store,
            out,
            name=name,
            study_name=settings.study_name,
            codebook_version=codebook_version,
            machine=machine,
            reviewers=reviewers,
            gold=gold,
            run_ids=run or None,
            gold_sets=gold_set or None,
            schema_dir=_schema_dir(settings, no_validate),
            check_schema=not no_validate,
        )
    except RefiError as exc:
        raise fail(escape(str(exc))) from exc
    finally:
        store.close()
    _notices(report.notices)
    console.print(report.summary(), markup=False)


@export_app.command("qdc")
def export_qdc_cmd(
    out: Annotated[Path, typer.Argument(help="File to write (.qdc).")],
    workspace: WorkspaceOption = Path("."),
    codebook_version: Annotated[str | None, typer.Option(help="Codebook version.")] = None,
    no_validate: NoValidateOption = False,
) -> None:
    """Write a stored codebook as a REFI-QDA codebook (.qdc)."""
    from qualflow.exchange.refiqda import RefiError, export_qdc

    settings, store = _open(workspace)
    try:
        codebook = store.codebook(codebook_version)
        if codebook is None:
            raise fail("no such codebook in the store" if codebook_version else "no codebook yet")
        notices = export_qdc(
            codebook,
            out,
            schema_dir=_schema_dir(settings, no_validate),
            check_schema=not no_validate,
            store=store,
        )
    except RefiError as exc:
        raise fail(escape(str(exc))) from exc
    finally:
        store.close()
    _notices(notices)
    console.print(
        f"{out}: {len(codebook.codes)} codes of '{codebook.name}' ({codebook.version})",
        markup=False,
    )


@export_app.command("codebook")
def export_codebook_cmd(
    out: Annotated[Path, typer.Argument(help="File to write (.csv).")],
    workspace: WorkspaceOption = Path("."),
    codebook_version: Annotated[str | None, typer.Option(help="Codebook version.")] = None,
) -> None:
    """Write a stored codebook as the CSV Taguette imports (tag, description)."""
    from qualflow.exchange.taguette import write_codebook_csv

    _, store = _open(workspace)
    try:
        codebook = store.codebook(codebook_version)
    finally:
        store.close()
    if codebook is None:
        raise fail("no such codebook in the store" if codebook_version else "no codebook yet")
    n = write_codebook_csv(codebook, out)
    console.print(
        f"{out}: {n} codes of '{codebook.name}' ({codebook.version}) as Taguette's codebook CSV",
        markup=False,
    )


@export_app.command("tables")
def export_tables_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the tables into.")],
    workspace: WorkspaceOption = Path("."),
    source: Annotated[
        str | None,
        typer.Option(
            help="gold:SET[:CODER], run:ID, review or review:USER "
            "(default: review if any, else the newest run, else the only gold set)."
        ),
    ] = None,
    fmt: Annotated[
        list[str] | None, typer.Option("--format", help="csv, xlsx, md (repeatable; default all).")
    ] = None,
    codebook_version: Annotated[str | None, typer.Option(help="Codebook to label codes.")] = None,
    max_quotes: Annotated[int, typer.Option(help="Quotes per code (0 = all).")] = 0,
    by_category: Annotated[
        bool, typer.Option(help="Participant matrix columns are categories, not codes.")
    ] = False,
    matrix_unit: Annotated[
        str,
        typer.Option(help="What a participant matrix cell counts: highlights or sentences."),
    ] = "highlights",
) -> None:
    """Write the code frequency table (highlights, sentences and participants per code),
    participant-by-code matrix and quotes by code (one per highlight)."""
    from qualflow.exchange.tables import TableError, write_paper_tables

    if matrix_unit not in ("highlights", "sentences"):
        raise fail(f"--matrix-unit must be highlights or sentences, not '{escape(matrix_unit)}'")
    _, store = _open(workspace)
    try:
        coding, written = write_paper_tables(
            store,
            out_dir,
            source=source,
            formats=fmt or None,
            codebook_version=codebook_version,
            max_quotes=max_quotes,
            by_category=by_category,
            matrix_unit=matrix_unit,  # type: ignore[arg-type]
        )
    except TableError as exc:
        raise fail(escape(str(exc))) from exc
    finally:
        store.close()
    spans, texts = len(coding.coding.spans), len(coding.coding.transcripts())
    console.print(
        f"coding source: {coding.label} ({spans} highlights in {texts} transcripts)",
        markup=False,
    )
    for path, rows in written:
        console.print(f"  {path} ({rows} rows)", markup=False)


@export_app.command("proposals")
def export_proposals_cmd(
    out: Annotated[Path, typer.Argument(help="File to write (.csv or .jsonl).")],
    workspace: WorkspaceOption = Path("."),
    run: Annotated[list[int] | None, typer.Option("--run", help="Only these runs.")] = None,
    text: Annotated[
        bool, typer.Option(help="Include transcript text (the span's and the unit's).")
    ] = True,
) -> None:
    """Every machine proposal with its span, the unit it was found in, and its provenance
    (coder, model, prompt, confidence, ...)."""
    from qualflow.exchange.provenance import ProvenanceError, export_proposals

    _, store = _open(workspace)
    try:
        n = export_proposals(store, out, run_ids=run or None, with_text=text)
    except ProvenanceError as exc:
        raise fail(escape(str(exc))) from exc
    finally:
        store.close()
    console.print(f"{out}: {n} proposal rows")


@export_app.command("decisions")
def export_decisions_cmd(
    out: Annotated[Path, typer.Argument(help="File to write (.csv or .jsonl).")],
    workspace: WorkspaceOption = Path("."),
    text: Annotated[
        bool, typer.Option(help="Include transcript text (the span's and the unit's).")
    ] = True,
) -> None:
    """The review log with reviewer, action, the unit decided on and the span and
    provenance of each proposal acted on."""
    from qualflow.exchange.provenance import ProvenanceError, export_decisions

    _, store = _open(workspace)
    try:
        n = export_decisions(store, out, with_text=text)
    except ProvenanceError as exc:
        raise fail(escape(str(exc))) from exc
    finally:
        store.close()
    console.print(f"{out}: {n} decision rows")
