"""Paper tables (frequency, participant matrix, quotes) and provenance exports."""

from __future__ import annotations

import csv
import json

import pytest
from openpyxl import load_workbook

from qualflow.exchange.provenance import (
    DECISION_COLUMNS,
    PROPOSAL_COLUMNS,
    ProvenanceError,
    export_decisions,
    export_proposals,
)
from qualflow.exchange.tables import (
    TableError,
    category_of,
    code_frequency,
    default_source,
    participant_matrix,
    quotes_by_code,
    resolve_source,
    source_codebook,
    write_table,
)
from tests.fixtures.exchange.study import build_study


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def study(store):
    return build_study(store)


def test_category_of():
    assert category_of("01.use.frequency.daily") == "01.use"
    assert category_of("02.selection") == "02"  # numbered, only one level below
    assert category_of("zz_intro.background") == "zz_intro"
    assert category_of("zz_intro") == "zz_intro"


def test_sources(store, study):
    gold = resolve_source(store, "gold:gold-a")
    assert gold.coding == study["gold"]
    assert gold.codebook_version == study["codebook_version"]
    assert resolve_source(store, "gold:gold-a:ann").coding == study["gold"]
    run = resolve_source(store, f"run:{study['run_id']}")
    assert run.coding[study["passages"]["daily"].id] == {"01.use.frequency.daily"}
    review = resolve_source(store, "review")
    assert review.coding[study["passages"]["score"].id] == {"02.selection", "zz_intro"}
    assert resolve_source(store, "review:rita").coding == review.coding
    assert default_source(store) == "review"
    for bad, message in [
        ("gold:nope", "no gold set"),
        ("gold:gold-a:bob", "no coder 'bob'"),
        ("run:x", "must be a number"),
        ("run:999", "no proposals"),
        ("review:nobody", "reviewer 'nobody'"),
        ("magic", "expected gold"),
    ]:
        with pytest.raises(TableError, match=message):
            resolve_source(store, bad)


def test_code_frequency(store, study):
    source = resolve_source(store, "gold:gold-a")
    table = code_frequency(store, source, source_codebook(store, source))
    rows = {r["title"]: r for r in table.rows}
    assert list(rows) == [
        "01.use.frequency",
        "01.use.frequency.daily",
        "02.selection",
        "zz_intro",
    ]
    assert rows["zz_intro"]["count of tags"] == 2  # I-1 and I-2 each once
    assert rows["zz_intro"]["number of participants"] == 2
    assert rows["01.use.frequency.daily"] == {
        "category": "01.use",
        "title": "01.use.frequency.daily",
        "description": "Daily use — “every day”.",
        "count of tags": 1,
        "number of participants": 1,
    }
    assert table.group_by == "category"
    assert "5 tags, 2 participants" in table.notes[0]


def test_participant_matrix(store, study):
    source = resolve_source(store, "gold:gold-a")
    table = participant_matrix(store, source, source_codebook(store, source))
    assert table.columns[:4] == ["participant", "area", "role", "passages"]
    rows = {r["participant"]: r for r in table.rows}
    assert rows["I-1"]["area"] == "Product" and rows["I-2"]["role"] == "Manager"
    assert rows["I-1"]["02.selection"] == 1 and rows["I-2"]["02.selection"] == 0
    assert rows["I-2"]["01.use.frequency"] == 1
    assert rows["total"]["zz_intro"] == 2
    assert rows["total"]["passages"] == len(study["gold"])


def test_participant_matrix_by_category(store, study):
    source = resolve_source(store, "gold:gold-a")
    table = participant_matrix(store, source, source_codebook(store, source), by_category=True)
    assert table.columns[4:] == ["01.use", "02", "zz_intro"]
    rows = {r["participant"]: r for r in table.rows}
    assert rows["I-1"]["01.use"] == 1 and rows["I-2"]["01.use"] == 1
    assert rows["total"]["zz_intro"] == 2


def test_quotes_by_code(store, study):
    source = resolve_source(store, "review")
    table = quotes_by_code(store, source, source_codebook(store, source))
    quotes = [(r["code"], r["participant"], r["quote"]) for r in table.rows]
    assert ("02.selection", "I-1", study["passages"]["score"].text.replace("\r\n", " ")) in quotes
    assert all(code for code, _, _ in quotes)
    assert len(quotes) == 3  # daily, score x2 (selection, zz_intro); 'team' has no code


def test_flat_codebook_has_no_category_column(store, tmp_path):
    from qualflow.exchange.taguette import import_taguette
    from tests.test_exchange_taguette import make_project

    result = import_taguette(store, make_project(tmp_path))
    source = resolve_source(store, f"gold:{result.gold_set}")
    table = code_frequency(store, source, source_codebook(store, source))
    assert "category" not in table.columns and table.group_by is None
    # a transcript without a participant counts under its name, marked '?'
    matrix = participant_matrix(store, source, source_codebook(store, source))
    assert {r["participant"] for r in matrix.rows} == {"Café_interview?", "P2_session?", "total"}


def test_writers(store, study, tmp_path):
    source = resolve_source(store, "gold:gold-a")
    codebook = source_codebook(store, source)
    table = code_frequency(store, source, codebook)
    csv_path = write_table(table, tmp_path / "freq.csv")
    with open(csv_path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["title"] == "01.use.frequency"
    assert rows[1]["description"] == "Daily use — “every day”."
    md = write_table(table, tmp_path / "freq.md").read_text(encoding="utf-8")
    assert "## 01.use" in md and "## zz_intro" in md
    assert "| 01.use.frequency.daily | Daily use — “every day”. | 1 | 1 |" in md
    xlsx = write_table(table, tmp_path / "freq.xlsx")
    ws = load_workbook(xlsx).active
    assert [c.value for c in ws[1]] == table.columns
    assert ws.cell(row=3, column=2).value == "01.use.frequency.daily"
    assert ws.cell(row=3, column=4).value == 1
    quotes = quotes_by_code(store, source, codebook)
    md = write_table(quotes, tmp_path / "q.md").read_text(encoding="utf-8")
    assert "## 02.selection" in md and "I started in 2019 as a naïve engineer." in md
    with pytest.raises(TableError, match="unknown table format"):
        write_table(table, tmp_path / "freq.pdf")


def test_markdown_escapes_pipes(store, study, tmp_path):
    from qualflow.exchange.tables import Table, to_markdown

    md = to_markdown(Table(title="t", columns=["a"], rows=[{"a": "x | y\nz"}]))
    assert "| x \\| y z |" in md


# ---------------------------------------------------------------------- provenance


def test_proposals_export(store, study, tmp_path):
    n = export_proposals(store, tmp_path / "p.csv")
    assert n == 6  # 5 proposals + 1 empty answer ('team')
    with open(tmp_path / "p.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == PROPOSAL_COLUMNS
    daily = next(
        r for r in rows if r["code"] == "01.use.frequency.daily" and r["confidence"] == "0.92"
    )
    assert daily["model"] == "gpt-4o-mini" and daily["prompt_version"] == "prompt-abc123"
    assert daily["codebook_version"] == study["codebook_version"]
    assert daily["rationale"] == "The speaker says “Every day”."
    assert daily["evidence"] == "Every day" and daily["participant"] == "I-1"
    assert daily["run_id"] == str(study["run_id"]) and daily["created_at"]
    empty = next(r for r in rows if r["passage_id"] == study["passages"]["team"].id)
    assert empty["code"] == "" and empty["status"] == "ok"

    export_proposals(store, tmp_path / "p.jsonl", with_text=False)
    records = read_jsonl(tmp_path / "p.jsonl")
    assert len(records) == 6 and "passage_text" not in records[0]
    assert isinstance(records[0]["confidence"], float)
    assert export_proposals(store, tmp_path / "none.csv", run_ids=[999]) == 0


def test_decisions_export(store, study, tmp_path):
    n = export_decisions(store, tmp_path / "d.jsonl")
    records = read_jsonl(tmp_path / "d.jsonl")
    assert n == len(records) == 7  # 3 adds, 1 no_code, 3 done
    assert list(records[0]) == DECISION_COLUMNS
    assert {r["reviewer"] for r in records} == {"rita"}
    add = records[0]
    assert add["action"] == "add" and add["codes_before"] == [] and add["codes_after"]
    assert add["participant"] == "I-1" and add["created_at"]
    export_decisions(store, tmp_path / "d.csv")
    with open(tmp_path / "d.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    both = next(r for r in rows if r["code"] == "zz_intro")
    assert both["action"] == "add" and both["codes_after"] == "02.selection; zz_intro"
    with pytest.raises(ProvenanceError, match="unknown format"):
        export_decisions(store, tmp_path / "d.parquet")


def test_decision_on_a_proposal_carries_its_provenance(store, study, tmp_path):
    from sqlalchemy import select

    from qualflow.db import ProposalRow
    from qualflow.review.auth import add_user
    from qualflow.review.decisions import decide

    monthly = study["passages"]["monthly"]
    with store.session() as s:
        pid = s.scalar(select(ProposalRow.id).where(ProposalRow.passage_id == monthly.id))
    vera = add_user(store, "vera", "password123")
    decide(store, vera.id, monthly.id, "accept", version=0, proposal_id=pid)
    export_decisions(store, tmp_path / "d.jsonl")
    records = read_jsonl(tmp_path / "d.jsonl")
    accept = next(r for r in records if r["action"] == "accept")
    assert accept["reviewer"] == "vera"
    assert accept["proposal_code"] == "01.use.frequency"
    assert accept["proposal_confidence"] == 0.7
    assert accept["model"] == "gpt-4o-mini" and accept["prompt_version"] == "prompt-abc123"
    assert accept["run_id"] == study["run_id"]


def test_write_paper_tables(store, study, tmp_path):
    from qualflow.exchange.tables import write_paper_tables

    source, written = write_paper_tables(store, tmp_path / "out", formats=["md", "csv"])
    assert source.spec == "review"  # the default: reviewed passages exist
    names = sorted(p.name for p, _ in written)
    assert names == [
        "code-frequency.csv",
        "code-frequency.md",
        "participant-matrix.csv",
        "participant-matrix.md",
        "quotes-by-code.csv",
        "quotes-by-code.md",
    ]
    rows = dict((p.name, n) for p, n in written)
    assert rows["quotes-by-code.csv"] == 3 and rows["code-frequency.md"] == 4
