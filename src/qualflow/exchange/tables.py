"""The tables that go into a paper, from any coding source, as CSV, XLSX or Markdown.

Every table says which unit it counts. A coder's work is spans (highlights: stretches
of text with a code); the sentences are the grid that sentence-level figures use. So:

- ``code_frequency``: the form of the seed study's appendix: per category, each code's
  title, description, the number of highlights (spans) with the code, the number of
  sentences carrying it, and the number of participants with a highlight of it.
- ``participant_matrix``: participants (with their attributes, e.g. area and role) by
  codes; a cell counts that participant's highlights of the code (or, with
  ``unit="sentences"``, the participant's sentences carrying it).
- ``quotes_by_code``: every highlight of each code, with participant id, the speaker
  of the text (so an interviewer's line is not taken for the participant's), the
  transcript and the offsets, ready to quote in a findings section.

A sentence carries a code when the code's spans cover at least half of it or one lies
inside it (``qualflow.exchange.spans.project_to_sentences``); only sentences inside the
coder's scope (the text it answered for) are counted.

A coding source is named by a short spec (``resolve_source``):
``gold:SET`` or ``gold:SET:CODER``, ``run:ID`` (the run's spans as stored), ``review``
(every reviewer's finished work, united) or ``review:USERNAME``.

A participant is a transcript's ``participant_id``; a transcript without one counts as
its own participant under the transcript name (marked with ``?``), so nothing is
silently dropped.

Writers: CSV and XLSX cells go through ``qualflow.cells.safe_cell`` (a quote starting
with ``=`` must not run as a formula); XLSX text cells are strings, never formulas, and
keep their text verbatim (a formula-like one gets the cell's quote-prefix flag, the
XLSX form of the leading apostrophe). Markdown cells escape what Markdown or HTML
would render (``*``, ``_``, backticks, ``|``, ``<``...), so rendered quotes are verbatim.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qualflow.cells import safe_cell, safe_row
from qualflow.exchange.spans import merge_ranges, project_to_sentences, scope_sentences
from qualflow.models import Codebook, Passage, Span, SpanCoding, Transcript
from qualflow.store import Store

HIGHLIGHTS = "highlights (spans)"
SENTENCES = "sentences coded"
PARTICIPANTS = "participants"
COLUMN_NOTES = {
    HIGHLIGHTS: "highlights (spans): stretches of text coded with the code, as coded",
    SENTENCES: "sentences coded: sentences carrying the code (its highlights cover at "
    "least half of the sentence, or one lies inside it)",
    PARTICIPANTS: "participants: participants with at least one highlight of the code",
}
MatrixUnit = Literal["highlights", "sentences"]


class TableError(ValueError):
    """A table that cannot be made: unknown source, unknown format."""


@dataclass
class CodingSource:
    """A resolved coding source: one coder's spans and scope, and where they came from."""

    spec: str
    label: str
    coding: SpanCoding
    codebook_version: str | None = None


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    group_by: str | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- sources


def resolve_source(store: Store, spec: str) -> CodingSource:
    """The coding named by ``spec`` (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "gold":
        return _gold_source(store, spec, rest)
    if kind == "run":
        return _run_source(store, spec, rest)
    if kind == "review":
        return _review_source(store, spec, rest)
    raise TableError(
        f"coding source '{spec}': expected gold:SET[:CODER], run:ID, review or review:USER"
    )


def _run_source(store: Store, spec: str, rest: str) -> CodingSource:
    try:
        run_id = int(rest)
    except ValueError as exc:
        raise TableError(f"coding source '{spec}': run id must be a number") from exc
    sets = store.proposal_sets(run_id=run_id)
    if not sets:
        raise TableError(f"coding source '{spec}': run {run_id} has no proposals")
    label = f"run {run_id} ({sets[0].coder}, {sets[0].model})"
    return CodingSource(
        spec, label, store.span_coding(label, run_id=run_id), sets[0].codebook_version
    )


def _review_source(store: Store, spec: str, rest: str) -> CodingSource:
    from qualflow.exchange.reviewed import review_work

    reviewers = {r.reviewer: r.coding for r in review_work(store).reviewers}
    if rest:
        if rest not in reviewers:
            known = ", ".join(sorted(reviewers)) or "none"
            raise TableError(
                f"coding source '{spec}': reviewer '{rest}' has no finished work "
                f"(reviewers with some: {known})"
            )
        return CodingSource(spec, f"reviewer {rest}", reviewers[rest])
    if not reviewers:
        raise TableError(f"coding source '{spec}': nothing reviewed yet")
    label = f"review ({', '.join(sorted(reviewers))})"
    return CodingSource(spec, label, united(label, reviewers.values()))


def united(coder: str, codings: Iterable[SpanCoding]) -> SpanCoding:
    """Several codings as one: every distinct span, scopes joined."""
    spans: set[Span] = set()
    scope: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for coding in codings:
        spans.update(coding.spans)
        for tid, ranges in coding.scope.items():
            scope[tid] += ranges
    return SpanCoding(coder, sorted(spans), {t: merge_ranges(r) for t, r in scope.items()})


def default_source(store: Store) -> str:
    """The best coding there is: reviewed work, else the newest run, else the only
    gold set."""
    from sqlalchemy import select

    from qualflow.db import RunRow
    from qualflow.exchange.reviewed import review_work

    if review_work(store).reviewers:
        return "review"
    with store.session() as s:
        run_id = s.scalar(select(RunRow.id).order_by(RunRow.id.desc()).limit(1))
    if run_id is not None:
        return f"run:{run_id}"
    sets = store.gold_sets()
    if len(sets) == 1:
        return f"gold:{sets[0]}"
    raise TableError(
        "no coding source given and none to default to: name one with --source "
        f"(gold sets: {', '.join(sets) or 'none'}; no runs, no reviews)"
    )


def _gold_source(store: Store, spec: str, rest: str) -> CodingSource:
    gold_set, coder = rest, None
    sets = store.gold_sets()
    if gold_set not in sets and ":" in rest:
        gold_set, _, coder = rest.rpartition(":")
    if gold_set not in sets:
        raise TableError(
            f"coding source '{spec}': no gold set '{rest}' (known: {', '.join(sets) or 'none'})"
        )
    coders = store.gold_codings(gold_set)
    if coder is None:
        if len(coders) != 1:
            raise TableError(
                f"coding source '{spec}': gold set '{gold_set}' has several coders "
                f"({', '.join(sorted(coders))}); name one as gold:{gold_set}:CODER"
            )
        coder = next(iter(coders))
    if coder not in coders:
        raise TableError(f"coding source '{spec}': no coder '{coder}' in gold set '{gold_set}'")
    from sqlalchemy import select

    from qualflow.db import GoldScopeRow

    with store.session() as s:
        version = s.scalar(
            select(GoldScopeRow.codebook_version)
            .where(GoldScopeRow.gold_set == gold_set, GoldScopeRow.coder == coder)
            .limit(1)
        )
    return CodingSource(spec, f"gold {gold_set} / {coder}", coders[coder], version)


def source_codebook(store: Store, source: CodingSource, version: str | None = None) -> Codebook:
    """The codebook to label a source's codes with: given, the source's, or the newest."""
    codebook = store.codebook(version or source.codebook_version) or store.codebook()
    if codebook is None:
        return Codebook(name="(no codebook)", codes=[])
    return codebook


# ---------------------------------------------------------------------- what a coding holds


@dataclass
class Highlight:
    """One span of the coding with where it lies and its text."""

    span: Span
    participant: str
    transcript: str
    speaker: str
    text: str


@dataclass
class Sentence:
    """One sentence in the coding's scope with the codes it carries."""

    passage: Passage
    participant: str
    transcript: str
    codes: frozenset[str]


@dataclass
class CodedText:
    """A coding's highlights and the sentences of its scope, in reading order."""

    highlights: list[Highlight]
    sentences: list[Sentence]
    grids: set[str]

    def participants(self) -> set[str]:
        return {h.participant for h in self.highlights} | {s.participant for s in self.sentences}


def coded_text(store: Store, coding: SpanCoding) -> CodedText:
    """The highlights and the sentences (with their codes) of a coding."""
    transcripts: dict[str, Transcript] = {}
    for tid in sorted(coding.transcripts()):
        t = store.transcript(tid)
        if t is not None:
            transcripts[tid] = t

    def who(tid: str) -> tuple[str, str]:
        t = transcripts.get(tid)
        name = t.name if t else tid
        return (t.participant_id if t else None) or f"{name}?", name

    highlights = []
    for span in coding.spans:
        t = transcripts.get(span.transcript_id)
        participant, name = who(span.transcript_id)
        text = t.text[span.start : span.end] if t else ""
        highlights.append(Highlight(span, participant, name, _speakers(t, span), text))
    grid = scope_sentences(store, coding)
    carried = project_to_sentences(coding, grid)
    sentences = [Sentence(p, *who(p.transcript_id), carried[p.id]) for p in grid]
    highlights.sort(key=lambda h: (_natural(h.participant), h.transcript, h.span))
    sentences.sort(key=lambda s: (_natural(s.participant), s.transcript, s.passage.index))
    return CodedText(highlights, sentences, {p.segmentation for p in grid})


def _speakers(t: Transcript | None, span: Span) -> str:
    """The speakers of the turns a span overlaps, in order."""
    if t is None:
        return ""
    found = [
        turn.speaker
        for turn in t.turns
        if turn.speaker and turn.char_start < span.end and span.start < turn.char_end
    ]
    return ", ".join(dict.fromkeys(found))


def category_of(title: str) -> str:
    """The category a code is listed under: its first title segment, or the first two
    when the first is only a number (``01.use.frequency`` -> ``01.use``); a title
    without dots is its own category (``zz_intro``)."""
    parts = title.split(".")
    if len(parts) > 2 and parts[0].isdigit():
        return ".".join(parts[:2])
    return parts[0]


def _ordered_codes(codebook: Codebook, used: set[str]) -> tuple[list[str], list[str]]:
    titles = codebook.titles()
    extra = sorted(used - set(titles))
    return titles, extra


def _grid_note(coded: CodedText) -> list[str]:
    other = sorted(coded.grids - {"sentence"})
    if not other:
        return []
    return [
        f"transcripts without sentence passages count their stored grid ({', '.join(other)}) "
        "as sentences"
    ]


# ---------------------------------------------------------------------- tables


def code_frequency(store: Store, source: CodingSource, codebook: Codebook) -> Table:
    """Per category: title, description, highlights, sentences coded, participants."""
    coded = coded_text(store, source.coding)
    highlights: dict[str, int] = defaultdict(int)
    people: dict[str, set[str]] = defaultdict(set)
    for h in coded.highlights:
        highlights[h.span.code] += 1
        people[h.span.code].add(h.participant)
    sentences: dict[str, int] = defaultdict(int)
    for sentence in coded.sentences:
        for code in sentence.codes:
            sentences[code] += 1
    titles, extra = _ordered_codes(codebook, set(highlights))
    table = Table(
        title=f"Code frequency: {source.label}",
        columns=["category", "title", "description", HIGHLIGHTS, SENTENCES, PARTICIPANTS],
        group_by="category",
    )
    rows = []
    for title in [*titles, *extra]:
        code = codebook.get(title)
        rows.append(
            {
                "category": category_of(title),
                "title": title,
                "description": code.description if code else "(not in the codebook)",
                HIGHLIGHTS: highlights.get(title, 0),
                SENTENCES: sentences.get(title, 0),
                PARTICIPANTS: len(people.get(title, ())),
            }
        )
    order = {cat: i for i, cat in enumerate(dict.fromkeys(r["category"] for r in rows))}
    table.rows = sorted(rows, key=lambda r: order[r["category"]])
    if not any("." in r["title"] for r in rows):  # flat codebook: no categories
        table.group_by = None
        table.columns.remove("category")
        for r in table.rows:
            del r["category"]
    n_coded = sum(1 for s in coded.sentences if s.codes)
    table.notes.append(
        f"{len(coded.highlights)} highlights (spans); {len(coded.sentences)} sentences in "
        f"the coder's scope, {n_coded} coded; {len(coded.participants())} participants; "
        f"codebook '{codebook.name}' ({codebook.version})"
    )
    table.notes += [COLUMN_NOTES[c] for c in (HIGHLIGHTS, SENTENCES, PARTICIPANTS)]
    table.notes += _grid_note(coded)
    if extra:
        table.notes.append(f"codes not in the codebook: {', '.join(extra)}")
    return table


def participant_matrix(
    store: Store,
    source: CodingSource,
    codebook: Codebook,
    *,
    by_category: bool = False,
    unit: MatrixUnit = "highlights",
) -> Table:
    """Participants with their attributes by codes: a cell counts the participant's
    highlights of the code (``unit="highlights"``) or sentences carrying it
    (``unit="sentences"``).

    With ``by_category``, columns are categories (``category_of``): a cell counts the
    highlights of the category's codes, or the sentences carrying at least one of them.
    """
    if unit not in ("highlights", "sentences"):
        raise TableError(f"participant matrix: unit must be highlights or sentences, not {unit}")
    coded = coded_text(store, source.coding)
    people = {p.id: p for p in store.participants()}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    in_scope: dict[str, int] = defaultdict(int)
    for sentence in coded.sentences:
        in_scope[sentence.participant] += 1
        if unit == "sentences":
            keys = {category_of(c) for c in sentence.codes} if by_category else sentence.codes
            for key in keys:
                counts[sentence.participant][key] += 1
    if unit == "highlights":
        for h in coded.highlights:
            key = category_of(h.span.code) if by_category else h.span.code
            counts[h.participant][key] += 1
    used = {code for row in counts.values() for code in row}
    if by_category:
        titles = list(dict.fromkeys(category_of(t) for t in codebook.titles()))
        extra = sorted(used - set(titles))
    else:
        titles, extra = _ordered_codes(codebook, used)
    attrs: list[str] = []
    for p in people.values():
        for key in p.attributes:
            if key not in attrs:
                attrs.append(key)
    scope_column = "sentences in scope"
    columns = ["participant", *attrs, scope_column, *titles, *extra]
    kind = "category" if by_category else "code"
    cell = "highlights (spans)" if unit == "highlights" else "sentences coded"
    table = Table(title=f"Participants by {kind}, {cell}: {source.label}", columns=columns)
    table.notes.append(
        f"cells: {cell} of each {kind} per participant; "
        + (
            "a highlight counts once, under its code's column"
            if unit == "highlights"
            else COLUMN_NOTES[SENTENCES].split(": ", 1)[1]
        )
    )
    table.notes.append(f"{scope_column}: the participant's sentences the coder answered for")
    table.notes += _grid_note(coded)
    ids = sorted(coded.participants(), key=_natural)
    absent = sorted(set(people) - set(ids), key=_natural)
    if absent:
        table.notes.append(f"participants without text in this coding: {', '.join(absent)}")
    for pid in ids:
        row: dict[str, Any] = {"participant": pid}
        for key in attrs:
            row[key] = people[pid].attributes.get(key, "") if pid in people else ""
        row[scope_column] = in_scope.get(pid, 0)
        for title in [*titles, *extra]:
            row[title] = counts.get(pid, {}).get(title, 0)
        table.rows.append(row)
    total: dict[str, Any] = {"participant": "total", **dict.fromkeys(attrs, "")}
    total[scope_column] = sum(in_scope.values())
    for title in [*titles, *extra]:
        total[title] = sum(r[title] for r in table.rows)
    table.rows.append(total)
    return table


def quotes_by_code(
    store: Store, source: CodingSource, codebook: Codebook, *, max_per_code: int = 0
) -> Table:
    """Every highlight of each code, with participant, speaker, transcript and offsets."""
    coded = coded_text(store, source.coding)
    by_code: dict[str, list[Highlight]] = defaultdict(list)
    for h in coded.highlights:
        by_code[h.span.code].append(h)
    titles, extra = _ordered_codes(codebook, set(by_code))
    table = Table(
        title=f"Quotes by code: {source.label}",
        columns=[
            "code",
            "description",
            "participant",
            "speaker",
            "transcript",
            "start",
            "end",
            "quote",
        ],
        group_by="code",
        notes=[
            "one row per highlight (span); quote = the highlighted text, start/end = its "
            "character offsets in the transcript text"
        ],
    )
    for title in [*titles, *extra]:
        items = by_code.get(title, [])
        if max_per_code:
            items = items[:max_per_code]
        code = codebook.get(title)
        for h in items:
            table.rows.append(
                {
                    "code": title,
                    "description": code.description if code else "",
                    "participant": h.participant,
                    "speaker": h.speaker,
                    "transcript": h.transcript,
                    "start": h.span.start,
                    "end": h.span.end,
                    "quote": " ".join(h.text.split()),
                }
            )
    return table


def _natural(value: str) -> tuple:
    """Sort I-2 before I-10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", value))


def write_paper_tables(
    store: Store,
    out_dir: Path | str,
    *,
    source: str | None = None,
    formats: list[str] | tuple[str, ...] | None = None,
    codebook_version: str | None = None,
    max_quotes: int = 0,
    by_category: bool = False,
    matrix_unit: MatrixUnit = "highlights",
) -> tuple[CodingSource, list[tuple[Path, int]]]:
    """All three tables for one coding source (default: ``default_source``), in every
    format asked for (default csv, xlsx, md); returns the source and (path, rows)."""
    coding = resolve_source(store, source or default_source(store))
    codebook = source_codebook(store, coding, codebook_version)
    fmts = [table_format(f"x.{f}") for f in (formats or FORMATS)]
    tables = {
        "code-frequency": code_frequency(store, coding, codebook),
        "participant-matrix": participant_matrix(
            store, coding, codebook, by_category=by_category, unit=matrix_unit
        ),
        "quotes-by-code": quotes_by_code(store, coding, codebook, max_per_code=max_quotes),
    }
    written = []
    for stem, table in tables.items():
        for f in fmts:
            written.append((write_table(table, Path(out_dir) / f"{stem}.{f}", f), len(table.rows)))
    return coding, written


# ---------------------------------------------------------------------- writers

FORMATS = ("csv", "xlsx", "md")


def table_format(path: Path | str, fmt: str | None = None) -> str:
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    fmt = {"markdown": "md", "xls": "xlsx"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise TableError(f"{path}: unknown table format '{fmt}' (csv, xlsx or md)")
    return fmt


def write_table(table: Table, path: Path | str, fmt: str | None = None) -> Path:
    """Write ``table`` as CSV, XLSX or Markdown (by ``fmt`` or the file extension)."""
    path = Path(path)
    fmt = table_format(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        path.write_text(to_csv(table), encoding="utf-8")
    elif fmt == "md":
        path.write_text(to_markdown(table), encoding="utf-8")
    else:
        to_xlsx(table, path)
    return path


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=table.columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(safe_row(row) for row in table.rows)
    return buf.getvalue()


_MD_SPECIAL = re.compile(r"([\\`*_~\[\]|#!])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md_escape(value: Any) -> str:
    """Text for a Markdown table cell that renders as itself: Markdown's special
    characters backslash-escaped, ``&``, ``<`` and ``>`` as entities (no HTML, no
    entity), line breaks as spaces."""
    text = " ".join(str(value).splitlines())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return "".join(_HTML.get(ch, ch) for ch in text)


def _md_cell(value: Any) -> str:
    return md_escape(value)


def to_markdown(table: Table) -> str:
    lines = [f"# {table.title}", ""]
    lines += [f"- {md_escape(note)}" for note in table.notes]  # escaped: no markup
    if table.notes:
        lines.append("")
    columns = [c for c in table.columns if c != table.group_by]
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in table.rows:
        groups[row.get(table.group_by) if table.group_by else None].append(row)
    for group, rows in groups.items():
        if table.group_by:
            lines += [f"## {group}", ""]
        lines.append("| " + " | ".join(_md_cell(c) for c in columns) + " |")
        lines.append(
            "| "
            + " | ".join("---:" if isinstance(rows[0].get(c), int) else "---" for c in columns)
            + " |"
        )
        for row in rows:
            lines.append("| " + " | ".join(_md_cell(row.get(c, "")) for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def to_xlsx(table: Table, path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font

    wb = Workbook()
    ws = wb.active
    ws.title = table.title.split(":")[0][:31]
    xlsx_row(ws, 1, table.columns)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for i, row in enumerate(table.rows, start=2):
        xlsx_row(ws, i, [row.get(c, "") for c in table.columns])
    ws.freeze_panes = "A2"
    for i, col in enumerate(table.columns, start=1):
        width = max([len(str(col)), *(len(str(r.get(col, ""))) for r in table.rows)])
        letter = ws.cell(row=1, column=i).column_letter
        ws.column_dimensions[letter].width = min(max(8, width + 2), 80)
        if width > 80:
            for cell in ws[letter][1:]:
                cell.alignment = Alignment(wrap_text=True, vertical="top")
    if table.notes:
        notes = wb.create_sheet("notes")
        for i, note in enumerate([table.title, *table.notes], start=1):
            xlsx_row(notes, i, [note])
    wb.save(path)


def xlsx_row(ws: Any, row: int, values: list[Any]) -> None:
    """Write one row of cells: text as a string cell (never a formula) kept verbatim,
    with the quote-prefix flag when ``safe_cell`` finds it formula-like; numbers as
    numbers."""
    for col, value in enumerate(values, start=1):
        cell = ws.cell(row=row, column=col)
        if isinstance(value, str):
            cell.value = value
            cell.data_type = "s"
            cell.quotePrefix = safe_cell(value) != value
        else:
            cell.value = value
