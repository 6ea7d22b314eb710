"""Workspace commands: init, ingest, passages, participants, codebook, status."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from qualflow.cli.common import (
    EXIT_FAILED,
    EXIT_PARTIAL,
    WorkspaceOption,
    codebook_label,
    console,
    fail,
    open_workspace_store,
    require_workspace,
    workspace_write_problem,
)

codebook_app = typer.Typer(help="Inspect and load codebooks.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("ingest")(ingest)
    app.command("passages")(passages)
    app.command("participants")(participants)
    app.command("status")(status)
    app.add_typer(codebook_app, name="codebook")


def _open(workspace: Path):
    from qualflow.settings import load_settings

    require_workspace(workspace)
    settings = load_settings(workspace)
    return settings, open_workspace_store(settings)


def init(
    study_dir: Annotated[Path, typer.Argument(help="Folder to create the workspace in.")],
    name: Annotated[str | None, typer.Option(help="Study name (default: folder name).")] = None,
) -> None:
    """Create a workspace: qualflow.toml plus data/ holding the SQLite store.

    All or nothing: when the store cannot be made, what this command created is
    removed again (an existing qualflow.toml or data/ is never touched).
    """
    from qualflow.settings import CONFIG_FILE, Settings, load_settings, render_toml

    config = study_dir / CONFIG_FILE
    created = _made_by_init(study_dir)
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        if config.exists():
            console.print(f"{config} exists; keeping it")
        else:
            created.append(config)
            config.write_text(render_toml(Settings(study_name=name or study_dir.resolve().name)))
        settings = load_settings(study_dir)
        problem = workspace_write_problem(study_dir)
        if problem:
            raise fail(problem)
        open_workspace_store(settings).close()
    except BaseException:
        _remove(created)
        raise
    console.print(f"workspace ready: {study_dir.resolve()}")
    console.print(f"  settings: {config}")
    console.print(f"  store:    {settings.db_url_masked}")


def _made_by_init(study_dir: Path) -> list[Path]:
    """The folders ``init`` is about to create (outermost first): removed on failure."""
    missing = [p for p in [study_dir, *study_dir.parents] if not p.exists()]
    data = study_dir / "data"
    return [*reversed(missing), *([] if data.exists() else [data])]


def _remove(paths: list[Path]) -> None:
    """Undo a failed ``init``: innermost first; folders only when only we filled them."""
    import shutil

    for path in reversed(paths):
        try:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        except OSError as exc:
            console.print(f"[yellow]could not remove {path}: {exc}[/]")


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Transcript files or folders.")],
    workspace: WorkspaceOption = Path("."),
    segmentation: Annotated[
        str | None, typer.Option(help="sentence | turn | window:N (default from settings).")
    ] = None,
    participants_file: Annotated[
        Path | None, typer.Option("--participants", help="CSV/TSV of participant metadata.")
    ] = None,
) -> None:
    """Read transcripts into the workspace (unchanged files are skipped)."""
    from qualflow.ingest import ingest_paths
    from qualflow.participants import ParticipantsError, load_participants

    settings, store = _open(workspace)
    if participants_file:
        try:
            store.save_participants(load_participants(participants_file))
        except ParticipantsError as exc:
            raise fail(str(exc)) from exc
    try:
        report = ingest_paths(store, paths, settings, segmentation=segmentation)
    except ValueError as exc:  # a bad guide_patterns / interview_guide setting
        raise fail(str(exc)) from exc
    for f in report.files:
        if f.status == "error":
            console.print(f"[red]error[/]     {f.reason}")
        elif f.status == "skipped":
            console.print(f"[dim]skipped   {f.path} ({f.reason})[/]")
        else:
            console.print(f"{f.status:<10}{f.path} ({f.passages} passages)")
        for warning in f.warnings:
            console.print(f"[yellow]  warning  {warning}[/]")
        if f.carried:
            from qualflow.review.carry import CarryReport

            for line in CarryReport(**f.carried).lines():
                console.print(f"          {line}", markup=False)
    console.print(
        f"{report.count('new')} new, {report.count('new_version')} new versions, "
        f"{report.count('unchanged')} unchanged, {len(report.errors)} errors"
    )
    if report.errors:  # some files failed: partly done (3), or nothing read (1)
        raise typer.Exit(EXIT_PARTIAL if report.transcript_ids else EXIT_FAILED)


def passages(
    workspace: WorkspaceOption = Path("."),
    transcript: Annotated[str | None, typer.Option(help="Only this transcript id.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | jsonl")] = "table",
    output: Annotated[Path | None, typer.Option("-o", help="Write to a file.")] = None,
    all_speakers: Annotated[
        bool, typer.Option("--all", help="Include passages that are not coded (interviewer).")
    ] = False,
    limit: Annotated[int, typer.Option(help="Rows in table view (0 = all).")] = 50,
) -> None:
    """List or export passages (id, transcript, speaker, offsets, text)."""
    settings, store = _open(workspace)
    rows = store.passages(
        transcript_id=transcript,
        segmentation=None if transcript else settings.segmentation,
        codable_only=not all_speakers,
    )
    fields = [
        "id",
        "transcript_id",
        "index",
        "speaker",
        "char_start",
        "char_end",
        "codable",
        "text",
    ]
    out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        if fmt == "jsonl":
            for p in rows:
                out.write(json.dumps(p.model_dump(include=set(fields)), ensure_ascii=False) + "\n")
        elif fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            for p in rows:
                writer.writerow(p.model_dump(include=set(fields)))
        elif fmt == "table":
            from rich.table import Table

            table = Table("id", "transcript", "speaker", "span", "text", show_lines=False)
            for p in rows[: limit or None]:
                table.add_row(
                    p.id, p.transcript_id, p.speaker or "", f"{p.char_start}-{p.char_end}", p.text
                )
            console.print(table)
            console.print(f"{len(rows)} passages")
        else:
            raise fail(f"--format {fmt}: choose table, csv or jsonl")
    finally:
        if output:
            out.close()


def participants(
    file: Annotated[Path, typer.Argument(help="CSV/TSV: first column id, then any columns.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Load participant metadata and attach it to matching transcripts."""
    from qualflow.participants import ParticipantsError, load_participants, match_participant

    _, store = _open(workspace)
    try:
        people = load_participants(file)
    except ParticipantsError as exc:
        raise fail(str(exc)) from exc
    store.save_participants(people)
    ids = [p.id for p in people]
    matched = 0
    for t in store.transcripts():
        pid = t.participant_id or match_participant(t.name, ids)
        if pid:
            store.set_participant(t.id, pid)
            matched += 1
    console.print(f"{len(people)} participants loaded; {matched} transcripts matched")


def status(workspace: WorkspaceOption = Path(".")) -> None:
    """What the workspace holds."""
    settings, store = _open(workspace)
    transcripts = store.transcripts()
    passages = store.passages(segmentation=settings.segmentation, codable_only=True)
    console.print(f"workspace:   {settings.workspace}")
    console.print(f"store:       {settings.db_url_masked}")
    console.print(f"transcripts: {len(transcripts)}")
    console.print(f"passages:    {len(passages)} codable ({settings.segmentation})")
    console.print(f"guide lines: {_guide_marked(store, settings)} passages marked (context)")
    active = store.active_codebook()
    if active is not None:
        console.print(
            f"codebook:    {active.name} {active.version} (active; {len(active.codes)} codes)",
            markup=False,
        )
    else:
        console.print(
            f"codebook:    {settings.codebook} (from the settings; no active codebook: "
            "`qualflow codebook load FILE` sets one)",
            markup=False,
        )
    console.print(f"gold sets:   {', '.join(store.gold_sets()) or '-'}")
    from qualflow.review.queue import status_lines

    for line in status_lines(store):
        console.print(line, markup=False)


def _guide_marked(store, settings) -> int:
    """Passages made context because they are guide lines read aloud (not codable, and
    not because an interviewer said them)."""
    from qualflow.segment import is_interviewer

    interviewers = {s.strip().casefold() for s in settings.interviewer_speakers}
    return sum(
        1
        for p in store.passages(segmentation=settings.segmentation)
        if not p.codable
        and (settings.code_interviewer or not is_interviewer(p.speaker, interviewers))
    )


@codebook_app.command("check")
def codebook_check(
    file: Annotated[str, typer.Argument(help="Codebook file (TSV/CSV/YAML) or shipped name.")],
) -> None:
    """Report a codebook's quirks (case variants, unused codes, parents applied, ...)."""
    from qualflow.codebook import CodebookError, check_codebook, load_codebook, summarize

    try:
        codebook = load_codebook(file, allow_duplicates=True)  # reported below, not refused
    except CodebookError as exc:
        raise fail(str(exc)) from exc
    info = summarize(codebook)
    console.print(
        f"{info['name']}: {info['codes']} codes in {info['categories']} top-level categories, "
        f"depth {info['max_depth']}, version {info['version']}"
    )
    quirks = check_codebook(codebook)
    for q in quirks:
        colour = "yellow" if q.severity == "warning" else "cyan"
        console.print(f"[{colour}]{q.severity:<8}[/] {q.kind:<20} {q.message}")
    warnings = sum(1 for q in quirks if q.severity == "warning")
    console.print(f"{warnings} warnings, {len(quirks) - warnings} notes (nothing was changed)")


@codebook_app.command("load")
def codebook_load(
    file: Annotated[str, typer.Argument(help="Codebook file or shipped name.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Store a codebook version and make it the workspace's active codebook."""
    from qualflow.codebook import CodebookError, load_codebook

    _, store = _open(workspace)
    try:
        codebook = load_codebook(file)
    except CodebookError as exc:
        raise fail(str(exc)) from exc
    previous = store.active_codebook()
    version = store.set_active_codebook(codebook)
    console.print(f"{codebook.name}: {len(codebook.codes)} codes, version {version}")
    was = f" (was {codebook_label(previous)})" if previous and previous.version != version else ""
    console.print(
        f"active codebook is now {codebook_label(codebook)}{was}: code, run, index, "
        "retrieve, eval and review use it",
        markup=False,
    )


@codebook_app.command("use")
def codebook_use(
    which: Annotated[str, typer.Argument(help="Stored codebook: name or version (prefix).")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Make a stored codebook (e.g. one an import brought) the active codebook."""
    _, store = _open(workspace)
    stored = store.codebook_versions()
    by_name = [v for v, name, _ in stored if name == which][-1:]  # a name: its newest
    by_version = [
        v for v, _, _ in stored if v == which or (len(which) >= 4 and v.startswith(which))
    ]
    matches = by_name or by_version
    if len(matches) != 1:
        listed = "; ".join(f"{name} {v} ({n} codes)" for v, name, n in stored) or "none"
        problem = "matches several" if matches else "matches no"
        raise fail(f"'{which}' {problem} stored codebooks (stored: {listed})")
    store.set_active_codebook(matches[0])
    active = store.active_codebook()
    console.print(f"active codebook is now {codebook_label(active)}", markup=False)


@codebook_app.command("list")
def codebook_list(workspace: WorkspaceOption = Path(".")) -> None:
    """Codebooks stored in the workspace (* = active)."""
    _, store = _open(workspace)
    active = store.meta(store.ACTIVE_CODEBOOK)
    for version, name, n in store.codebook_versions():
        mark = "*" if version == active else " "
        console.print(f"{mark} {name}  {version}  {n} codes", markup=False)
