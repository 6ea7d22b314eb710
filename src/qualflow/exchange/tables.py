"""The tables that go into a paper, from any coding source, as CSV, XLSX or Markdown.

- ``code_frequency``: the form of the seed study's appendix: per category, each code's
  title, description, count of tags (passages carrying the code) and number of
  participants (distinct participants among those passages).
- ``participant_matrix``: participants (with their attributes, e.g. area and role) by
  codes; a cell is the number of that participant's passages carrying the code.
- ``quotes_by_code``: the passages carrying each code, with participant id and the
  speaker of the line (so an interviewer's line is not taken for the participant's),
  ready to quote in a findings section.

A coding source is named by a short spec (``resolve_source``):
``gold:SET`` or ``gold:SET:CODER``, ``run:ID``, ``review`` (every reviewer's finished
passages, codes united per passage) or ``review:USERNAME``.

A passage's participant is its transcript's ``participant_id``; a transcript without
one counts as its own participant under the transcript name (marked with ``?``), so
nothing is silently dropped.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qualflow.cells import safe_cell, safe_row
from qualflow.highlights import passages_by_ids
from qualflow.models import Codebook, Coding, Passage
from qualflow.store import Store


class TableError(ValueError):
    """A table that cannot be made: unknown source, unknown format."""


@dataclass
class CodingSource:
    """A resolved coding source: the codings plus where they came from."""

    spec: str
    label: str
    coding: Coding
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
        try:
            run_id = int(rest)
        except ValueError as exc:
            raise TableError(f"coding source '{spec}': run id must be a number") from exc
        sets = store.proposal_sets(run_id=run_id)
        if not sets:
            raise TableError(f"coding source '{spec}': run {run_id} has no proposals")
        return CodingSource(
            spec,
            f"run {run_id} ({sets[0].coder}, {sets[0].model})",
            store.run_coding(run_id),
            sets[0].codebook_version,
        )
    if kind == "review":
        from qualflow.review.decisions import reviewer_codings

        codings = reviewer_codings(store)
        if rest:
            if rest not in codings:
                known = ", ".join(sorted(codings)) or "none"
                raise TableError(
                    f"coding source '{spec}': reviewer '{rest}' has no finished passages "
                    f"(reviewers with some: {known})"
                )
            return CodingSource(spec, f"reviewer {rest}", codings[rest])
        merged: dict[str, set[str]] = defaultdict(set)
        for coding in codings.values():
            for pid, codes in coding.items():
                merged[pid] |= codes
        if not merged:
            raise TableError(f"coding source '{spec}': no reviewed passages yet")
        return CodingSource(
            spec,
            f"review ({', '.join(sorted(codings))})",
            {pid: frozenset(c) for pid, c in merged.items()},
        )
    raise TableError(
        f"coding source '{spec}': expected gold:SET[:CODER], run:ID, review or review:USER"
    )


def default_source(store: Store) -> str:
    """The best coding there is: reviewed passages, else the newest run, else the only
    gold set."""
    from sqlalchemy import select

    from qualflow.db import RunRow
    from qualflow.review.decisions import reviewer_codings

    if reviewer_codings(store):
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
    coders = store.gold(gold_set)
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


# ---------------------------------------------------------------------- helpers


@dataclass
class _Coded:
    passage: Passage
    participant: str
    transcript: str
    codes: frozenset[str]


def _coded_passages(store: Store, coding: Coding) -> list[_Coded]:
    passages = passages_by_ids(store, coding)
    transcripts = {}
    for tid in {p.transcript_id for p in passages}:
        t = store.transcript(tid)
        if t is not None:
            transcripts[tid] = t
    out = []
    for p in passages:
        t = transcripts.get(p.transcript_id)
        name = t.name if t else p.transcript_id
        participant = (t.participant_id if t else None) or f"{name}?"
        out.append(_Coded(p, participant, name, coding[p.id]))
    out.sort(key=lambda c: (c.participant, c.transcript, c.passage.index))
    return out


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


# ---------------------------------------------------------------------- tables


def code_frequency(store: Store, source: CodingSource, codebook: Codebook) -> Table:
    """Per category: title, description, count of tags, number of participants."""
    coded = _coded_passages(store, source.coding)
    tags: dict[str, int] = defaultdict(int)
    people: dict[str, set[str]] = defaultdict(set)
    for c in coded:
        for code in c.codes:
            tags[code] += 1
            people[code].add(c.participant)
    titles, extra = _ordered_codes(codebook, set(tags))
    table = Table(
        title=f"Code frequency: {source.label}",
        columns=["category", "title", "description", "count of tags", "number of participants"],
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
                "count of tags": tags.get(title, 0),
                "number of participants": len(people.get(title, ())),
            }
        )
    order = {cat: i for i, cat in enumerate(dict.fromkeys(r["category"] for r in rows))}
    table.rows = sorted(rows, key=lambda r: order[r["category"]])
    if not any("." in r["title"] for r in rows):  # flat codebook: no categories
        table.group_by = None
        table.columns.remove("category")
        for r in table.rows:
            del r["category"]
    n_participants = len({c.participant for c in coded})
    table.notes.append(
        f"{len(coded)} passages ({sum(1 for c in coded if c.codes)} coded), "
        f"{sum(tags.values())} tags, {n_participants} participants; "
        f"codebook '{codebook.name}' ({codebook.version})"
    )
    if extra:
        table.notes.append(f"codes not in the codebook: {', '.join(extra)}")
    return table


def participant_matrix(
    store: Store, source: CodingSource, codebook: Codebook, *, by_category: bool = False
) -> Table:
    """Participants with their attributes by codes (passages carrying each code).

    With ``by_category``, columns are categories (``category_of``) and a cell counts
    the participant's passages carrying at least one code of that category.
    """
    coded = _coded_passages(store, source.coding)
    people = {p.id: p for p in store.participants()}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    passages: dict[str, int] = defaultdict(int)
    for c in coded:
        passages[c.participant] += 1
        keys = {category_of(code) for code in c.codes} if by_category else c.codes
        for key in keys:
            counts[c.participant][key] += 1
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
    columns = ["participant", *attrs, "passages", *titles, *extra]
    unit = "category" if by_category else "code"
    table = Table(title=f"Participants by {unit}: {source.label}", columns=columns)
    ids = sorted(passages, key=_natural)
    absent = sorted(set(people) - set(passages), key=_natural)
    if absent:
        table.notes.append(f"participants without passages in this coding: {', '.join(absent)}")
    for pid in ids:
        row: dict[str, Any] = {"participant": pid}
        for key in attrs:
            row[key] = people[pid].attributes.get(key, "") if pid in people else ""
        row["passages"] = passages.get(pid, 0)
        for title in [*titles, *extra]:
            row[title] = counts.get(pid, {}).get(title, 0)
        table.rows.append(row)
    total: dict[str, Any] = {"participant": "total", **dict.fromkeys(attrs, "")}
    total["passages"] = sum(passages.values())
    for title in [*titles, *extra]:
        total[title] = sum(r[title] for r in table.rows)
    table.rows.append(total)
    return table


def quotes_by_code(
    store: Store, source: CodingSource, codebook: Codebook, *, max_per_code: int = 0
) -> Table:
    """Every passage carrying each code, with participant and transcript."""
    coded = _coded_passages(store, source.coding)
    by_code: dict[str, list[_Coded]] = defaultdict(list)
    for c in coded:
        for code in c.codes:
            by_code[code].append(c)
    titles, extra = _ordered_codes(codebook, set(by_code))
    table = Table(
        title=f"Quotes by code: {source.label}",
        columns=[
            "code",
            "description",
            "participant",
            "speaker",
            "transcript",
            "passage",
            "quote",
        ],
        group_by="code",
    )
    for title in [*titles, *extra]:
        items = by_code.get(title, [])
        if max_per_code:
            items = items[:max_per_code]
        code = codebook.get(title)
        for c in items:
            table.rows.append(
                {
                    "code": title,
                    "description": code.description if code else "",
                    "participant": c.participant,
                    "speaker": c.passage.speaker or "",
                    "transcript": c.transcript,
                    "passage": c.passage.index,
                    "quote": " ".join(c.passage.text.split()),
                }
            )
    return table


def _natural(value: str) -> tuple:
    """Sort I-2 before I-10."""
    import re

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
) -> tuple[CodingSource, list[tuple[Path, int]]]:
    """All three tables for one coding source (default: ``default_source``), in every
    format asked for (default csv, xlsx, md); returns the source and (path, rows)."""
    coding = resolve_source(store, source or default_source(store))
    codebook = source_codebook(store, coding, codebook_version)
    fmts = [table_format(f"x.{f}") for f in (formats or FORMATS)]
    tables = {
        "code-frequency": code_frequency(store, coding, codebook),
        "participant-matrix": participant_matrix(store, coding, codebook, by_category=by_category),
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
    lines += [f"_{note}_" for note in table.notes]
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
