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
    HIGHLIGHTS,
    SENTENCES,
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
from tests.fixtures.exchange.study import CODEBOOK, build_study


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
    assert gold.coding == store.gold_codings("gold-a")["ann"]
    assert gold.codebook_version == study["codebook_version"]
    assert resolve_source(store, "gold:gold-a:ann").coding == gold.coding
    run = resolve_source(store, f"run:{study['run_id']}")
    assert sorted(run.coding.spans) == sorted(study["machine_spans"])  # spans as stored
    review = resolve_source(store, "review")
    score = study["passages"]["score"]
    assert {s.code for s in review.coding.spans if s.start == score.char_start} == {
        "02.selection",
        "zz_intro",
    }
    assert sorted(resolve_source(store, "review:rita").coding.spans) == review.coding.spans
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
    assert rows["zz_intro"][HIGHLIGHTS] == 2  # I-1 and I-2 each once
    assert rows["zz_intro"]["participants"] == 2
    assert rows["01.use.frequency.daily"] == {
        "category": "01.use",
        "title": "01.use.frequency.daily",
        "description": "Daily use — “every day”.",
        HIGHLIGHTS: 1,
        SENTENCES: 1,
        "participants": 1,
    }
    assert table.group_by == "category"
    assert table.notes[0].startswith(
        "5 highlights (spans); 7 sentences in the coder's scope, 5 coded; 2 participants"
    )
    # each column says which unit it counts
    assert any(n.startswith("highlights (spans): ") for n in table.notes)
    assert any(n.startswith("sentences coded: ") and "half" in n for n in table.notes)


def test_code_frequency_counts_highlights_and_sentences_apart(store, study):
    """One highlight over two sentences, two highlights in one sentence: the table
    counts 1 and 2 highlights, 2 and 1 sentences."""
    from qualflow.models import Span, SpanCoding

    daily, cafe = study["passages"]["daily"], study["passages"]["cafe"]
    monthly = study["passages"]["monthly"]
    t1, t2 = daily.transcript_id, monthly.transcript_id
    coding = SpanCoding(
        "zoe",
        [
            Span(t1, daily.char_start, cafe.char_end, "01.use.frequency.daily"),
            Span(t2, monthly.char_start, monthly.char_start + 6, "02.selection"),
            Span(t2, monthly.char_end - 8, monthly.char_end, "02.selection"),
            # a fifth of a sentence, neither inside it nor covering half: no sentence
            Span(t1, cafe.char_start, cafe.char_start + 8, "zz_intro"),
        ],
        {t1: [(0, len(store.transcript(t1).text))], t2: [(monthly.char_start, monthly.char_end)]},
    )
    store.save_gold_coding("z", coding)
    source = resolve_source(store, "gold:z")
    rows = {r["title"]: r for r in code_frequency(store, source, CODEBOOK).rows}
    assert (
        rows["01.use.frequency.daily"][HIGHLIGHTS],
        rows["01.use.frequency.daily"][SENTENCES],
    ) == (1, 2)
    assert (rows["02.selection"][HIGHLIGHTS], rows["02.selection"][SENTENCES]) == (2, 1)
    assert (rows["zz_intro"][HIGHLIGHTS], rows["zz_intro"][SENTENCES]) == (1, 1)  # inside
    quotes = quotes_by_code(store, source, CODEBOOK)
    texts = [(r["code"], r["quote"]) for r in quotes.rows]
    assert (
        "01.use.frequency.daily",
        "Every day, honestly. Café talk starts with the leaderboard 😀.",
    ) in texts
    assert ("02.selection", "We rar") in texts and len(quotes.rows) == 4


def test_run_tables_count_the_runs_spans(store, study):
    source = resolve_source(store, f"run:{study['run_id']}")
    table = code_frequency(store, source, source_codebook(store, source))
    rows = {r["title"]: r for r in table.rows}
    # "Every day, honestly. Café talk starts": the first sentence whole, under half of
    # the second: one highlight, one sentence
    assert (
        rows["01.use.frequency.daily"][HIGHLIGHTS],
        rows["01.use.frequency.daily"][SENTENCES],
    ) == (1, 1)
    assert (rows["01.use.frequency"][HIGHLIGHTS], rows["01.use.frequency"][SENTENCES]) == (2, 2)
    # the chunk the run left unanswered is not in its scope: 6 of 7 codable sentences
    assert "6 sentences in the coder's scope, 3 coded" in table.notes[0]
    quotes = {r["quote"] for r in quotes_by_code(store, source, CODEBOOK).rows}
    assert quotes == {
        "Every day, honestly. Café talk starts",
        "best “score”",
        "We pick the model",
        "maybe monthly",
    }


def test_participant_matrix(store, study):
    source = resolve_source(store, "gold:gold-a")
    table = participant_matrix(store, source, source_codebook(store, source))
    assert table.columns[:4] == ["participant", "area", "role", "sentences in scope"]
    assert "highlights (spans)" in table.title and table.notes[0].startswith("cells: highlights")
    rows = {r["participant"]: r for r in table.rows}
    assert rows["I-1"]["area"] == "Product" and rows["I-2"]["role"] == "Manager"
    assert rows["I-1"]["02.selection"] == 1 and rows["I-2"]["02.selection"] == 0
    assert rows["I-2"]["01.use.frequency"] == 1
    assert rows["total"]["zz_intro"] == 2
    assert rows["total"]["sentences in scope"] == len(study["gold"])


def test_participant_matrix_counts_sentences_on_request(store, study):
    source = resolve_source(store, f"run:{study['run_id']}")
    spans = participant_matrix(store, source, CODEBOOK)
    sentences = participant_matrix(store, source, CODEBOOK, unit="sentences")
    assert "sentences coded" in sentences.title
    by = {r["participant"]: r for r in sentences.rows}
    # two highlights of I-1 in one sentence ("We pick the model with the best “score”")
    assert by["I-1"]["02.selection"] == 1 and by["I-1"]["01.use.frequency"] == 1
    assert {r["participant"]: r for r in spans.rows}["total"]["01.use.frequency"] == 2
    with pytest.raises(TableError, match="highlights or sentences"):
        participant_matrix(store, source, CODEBOOK, unit="words")


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
    score = study["passages"]["score"]
    assert {(r["start"], r["end"]) for r in table.rows if r["code"] == "zz_intro"} == {
        (score.char_start, score.char_end)
    }


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
    assert "| 01.use.frequency.daily | Daily use — “every day”. | 1 | 1 | 1 |" in md
    xlsx = write_table(table, tmp_path / "freq.xlsx")
    ws = load_workbook(xlsx).active
    assert [c.value for c in ws[1]] == table.columns
    assert ws.cell(row=3, column=2).value == "01.use.frequency.daily"
    assert ws.cell(row=3, column=4).value == 1
    assert ws.cell(row=1, column=4).value == "highlights (spans)"
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
    assert n == 5  # 4 span proposals + 1 empty answer (I-2's last chunk)
    with open(tmp_path / "p.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == PROPOSAL_COLUMNS
    daily = next(
        r for r in rows if r["code"] == "01.use.frequency.daily" and r["confidence"] == "0.92"
    )
    assert daily["model"] == "gpt-4o-mini" and daily["prompt_version"] == "prompt-abc123"
    assert daily["codebook_version"] == study["codebook_version"]
    assert daily["rationale"] == "The speaker says “Every day, honestly. Café talk starts”."
    assert daily["evidence"] == "Every day, honestly. Café talk starts"
    assert daily["participant"] == "I-1" and daily["transcript"] == "I-1_interview"
    assert daily["run_id"] == str(study["run_id"]) and daily["created_at"]
    # the span: offsets into the transcript text and the text they cover
    assert (daily["span_start"], daily["span_end"]) == ("40", "77")
    assert daily["span_text"] == "Every day, honestly. Café talk starts"
    assert daily["located"] == "exact"
    # the unit it was found in: the chunk
    chunk = study["chunks"]["I-1_interview"][0]
    assert daily["unit_id"] == chunk.id and daily["unit_segmentation"] == "chunk:12"
    assert (daily["unit_start"], daily["unit_end"]) == (str(chunk.char_start), str(chunk.char_end))
    assert daily["unit_text"] == chunk.text
    empty = next(r for r in rows if r["unit_id"] == study["chunks"]["I-2_interview"][1].id)
    assert empty["code"] == "" and empty["status"] == "ok" and empty["span_start"] == ""

    export_proposals(store, tmp_path / "p.jsonl", with_text=False)
    records = read_jsonl(tmp_path / "p.jsonl")
    assert len(records) == 5
    assert not {"unit_text", "span_text"} & set(records[0])
    assert isinstance(records[0]["confidence"], float)
    assert isinstance(records[0]["span_start"], int)
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
    daily = study["passages"]["daily"]
    assert add["unit_id"] == daily.id and add["unit_segmentation"] == "sentence"
    assert add["unit_text"] == daily.text and add["unit_start"] == daily.char_start
    export_decisions(store, tmp_path / "d.csv")
    with open(tmp_path / "d.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    both = next(r for r in rows if r["code"] == "zz_intro")
    assert both["action"] == "add" and both["codes_after"] == "02.selection; zz_intro"
    export_decisions(store, tmp_path / "d-no-text.jsonl", with_text=False)
    assert "unit_text" not in read_jsonl(tmp_path / "d-no-text.jsonl")[0]
    with pytest.raises(ProvenanceError, match="unknown format"):
        export_decisions(store, tmp_path / "d.parquet")


def test_decision_on_a_proposal_carries_its_span_and_provenance(store, study, tmp_path):
    from sqlalchemy import select

    from qualflow.db import ProposalRow
    from qualflow.review.auth import add_user
    from qualflow.review.decisions import decide

    chunk = study["chunks"]["I-2_interview"][0]
    with store.session() as s:
        pid = s.scalar(select(ProposalRow.id).where(ProposalRow.passage_id == chunk.id))
    vera = add_user(store, "vera", "password123")
    decide(store, vera.id, chunk.id, "accept", version=0, proposal_id=pid)
    export_decisions(store, tmp_path / "d.jsonl")
    records = read_jsonl(tmp_path / "d.jsonl")
    accept = next(r for r in records if r["action"] == "accept")
    assert accept["reviewer"] == "vera"
    assert accept["proposal_code"] == "01.use.frequency"
    assert accept["proposal_confidence"] == 0.7
    assert accept["model"] == "gpt-4o-mini" and accept["prompt_version"] == "prompt-abc123"
    assert accept["run_id"] == study["run_id"]
    assert accept["unit_id"] == chunk.id and accept["unit_segmentation"] == "chunk:12"
    (span,) = [
        sp
        for sp in study["machine_spans"]
        if sp.code == "01.use.frequency" and sp.transcript_id == chunk.transcript_id
    ]
    assert (accept["proposal_start"], accept["proposal_end"]) == (span.start, span.end)
    assert accept["proposal_text"] == "maybe monthly"


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
