"""Taguette import: the project database and the CSV exports, small fixture and real file."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from qualflow.exchange.taguette import (
    ByteOffsets,
    TaguetteError,
    html_to_text,
    import_taguette,
    import_taguette_csv,
    label_speakers,
    read_codebook_csv,
    strip_tags,
)
from qualflow.highlights import load_highlights
from tests.conftest import SERDIF, needs_shared

FIXTURES = Path(__file__).parent / "fixtures" / "exchange"


def make_project(tmp_path: Path, *extra_sql: str) -> Path:
    """The small fixture project as a real SQLite file (optionally altered)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.sqlite3"
    db = sqlite3.connect(path)
    db.executescript((FIXTURES / "taguette-small.sql").read_text(encoding="utf-8"))
    for sql in extra_sql:
        db.execute(sql)
    db.commit()
    db.close()
    return path


def passage_with(store, text: str):
    return next(p for p in store.passages() if text in p.text)


# ---------------------------------------------------------------------- text and offsets


def test_html_to_text_keeps_taguette_text_and_exact_turns():
    html = "<h2>A &amp; B</h2>\n<p>  one.</p>\n<p></p>\n<p>   two &lt; three</p>"
    text, spans = html_to_text(html)
    assert text == "A & B\n  one.\n\n   two < three"
    assert [text[s:e] for s, e in spans] == ["A & B", "one.", "two < three"]


def test_recurring_labels_are_speakers():
    html = (
        "<p>MODERATOR: Please start.</p>\n<p>  Location: Dublin is fine.</p>\n"
        "<p>MODERATOR: Next task.</p>\n<p> I like it.</p>"
    )
    text, spans = html_to_text(html)
    turns = label_speakers(text, spans)
    assert [(t.speaker, t.text) for t in turns] == [
        ("MODERATOR", "Please start."),
        (None, "Location: Dublin is fine."),
        ("MODERATOR", "Next task."),
        (None, "I like it."),
    ]
    for t in turns:
        assert text[t.char_start : t.char_end] == t.text


def test_byte_offsets_to_code_points():
    text = "a’b😀c"
    offsets = ByteOffsets(text)
    assert offsets.to_char(0) == 0
    assert offsets.to_char(1) == 1  # start of ’ (3 bytes)
    assert offsets.to_char(4) == 2  # b
    assert offsets.to_char(5) == 3  # 😀 (4 bytes)
    assert offsets.to_char(9) == 4
    assert offsets.to_char(10) == 5  # end of text
    assert offsets.to_char(2) is None  # inside ’
    assert offsets.to_char(11) is None  # past the end


# ---------------------------------------------------------------------- small fixture


def test_import_small_project(store, tmp_path):
    result = import_taguette(store, make_project(tmp_path))
    assert result.project == "Tiny study"
    assert len(result.transcripts) == 2
    assert result.codes == 4
    assert result.highlights == 6
    assert result.tag_links == 6
    assert len(result.untagged) == 1 and "highlight 3" in result.untagged[0]
    assert result.unmatched == [] and result.problems == []
    assert result.gold_set == "taguette:Tiny study"
    assert list(result.coders) == ["ana"]  # the Taguette login from the commands table

    names = {t.name: t for t in store.transcripts()}
    assert set(names) == {"Café_interview", "P2_session"}
    cafe = names["Café_interview"]
    assert cafe.format == "taguette"
    for turn in cafe.turns:
        assert cafe.text[turn.char_start : turn.char_end] == turn.text
    assert "x < y" in cafe.text and "&lt;" not in cafe.text

    codebook = store.codebook(result.codebook_version)
    assert codebook.get("Simple export").description == "Export is easy."
    assert codebook.get("Positive experience").count == 2

    # every highlight's text equals its snippet with the tags stripped
    db = sqlite3.connect(make_project(tmp_path / "again"))
    snippets = {str(i): strip_tags(s) for i, s in db.execute("SELECT id, snippet FROM highlights")}
    highlights = load_highlights(store, source="taguette:Tiny study")
    assert {h.external_id for h in highlights} == set(snippets)
    for h in highlights:
        text = store.transcript(h.transcript_id).text
        assert text[h.char_start : h.char_end] == snippets[h.external_id] == h.snippet
    assert next(h for h in highlights if h.external_id == "3").code is None

    gold = store.gold(result.gold_set)["ana"]
    assert gold[passage_with(store, "Okay, I read this").id] == {"Positive experience"}
    assert gold[passage_with(store, "x < y").id] == {"Wording not clear", "Additional explanation"}
    assert gold[passage_with(store, "Naïve question").id] == {"Wording not clear"}
    assert gold[passage_with(store, "The map is great").id] == frozenset()  # untagged
    assert gold[passage_with(store, "The colours are nice").id] == {"Positive experience"}
    assert gold[passage_with(store, "1.a Is the text clear").id] == frozenset()
    assert len(gold) == len(store.passages())


def test_reimport_is_idempotent(store, tmp_path):
    path = make_project(tmp_path)
    first = import_taguette(store, path, gold_set="g")
    gold = store.gold("g")
    second = import_taguette(store, path, gold_set="g")
    assert second.transcripts == first.transcripts
    assert len(load_highlights(store)) == 7  # 6 highlights, one with two tags
    assert store.gold("g") == gold
    assert len(store.gold("g")["ana"]) == len(store.passages())


def test_turn_segmentation(store, tmp_path):
    result = import_taguette(store, make_project(tmp_path), segmentation="turn")
    gold = store.gold(result.gold_set)["ana"]
    turn = passage_with(store, "x < y")
    assert turn.segmentation == "turn"
    assert gold[turn.id] == {"Wording not clear", "Additional explanation"}


def test_offsets_out_of_range_and_mismatched_snippets_are_reported(store, tmp_path):
    path = make_project(
        tmp_path,
        "INSERT INTO highlights VALUES (7, 1, 5000, 5010, '<p>nowhere to be found</p>')",
        "INSERT INTO highlight_tags VALUES (7, 1)",
        # wrong offsets, but the snippet occurs in the text: relocated
        "INSERT INTO highlights VALUES (8, 2, 0, 5, '<p>Exporting was simple.</p>')",
        "INSERT INTO highlight_tags VALUES (8, 4)",
    )
    result = import_taguette(store, path)
    assert len(result.unmatched) == 1
    assert "highlight 7" in result.unmatched[0] and "out of range" in result.unmatched[0]
    relocated = next(h for h in load_highlights(store) if h.external_id == "8")
    assert relocated.snippet == "Exporting was simple."


def test_a_name_already_ingested_is_reported(store, tmp_path):
    from qualflow.models import Transcript, Turn

    text = "Exporting was simple, I said, in the original file."
    t = Transcript(
        id=Transcript.make_id("P2_session", "a" * 64),
        name="P2_session",
        source_path="P2_session.odt",
        content_hash="a" * 64,
        format="odt",
        text=text,
        turns=[Turn(index=0, text=text, char_start=0, char_end=len(text))],
    )
    store.save_transcript(t, [])
    result = import_taguette(store, make_project(tmp_path))
    assert len(result.problems) == 1
    assert "new version of transcript 'P2_session'" in result.problems[0]


def test_not_a_taguette_file(store, tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"PK\x03\x04 not a database")
    with pytest.raises(TaguetteError, match="not a SQLite database"):
        import_taguette(store, junk)
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.commit()
    with pytest.raises(TaguetteError, match="missing tables"):
        import_taguette(store, other)
    with pytest.raises(TaguetteError, match="no such file"):
        import_taguette(store, tmp_path / "absent.sqlite3")


def test_several_projects_need_a_choice(store, tmp_path):
    path = make_project(
        tmp_path, "INSERT INTO projects VALUES (2, 'Other', '', '2024-01-02 10:00:00')"
    )
    with pytest.raises(TaguetteError, match="several projects") as err:
        import_taguette(store, path)
    assert "--project-id" in str(err.value)  # the flag, not the Python argument's name
    assert "1='Tiny study'" in str(err.value) and "2='Other'" in str(err.value)
    assert import_taguette(store, path, project_id=1).highlights == 6


EXPORTED = (
    "DELETE FROM project_members",
    "DELETE FROM users",
    "INSERT INTO users VALUES ('admin', '2024-01-03 10:00:00', NULL, NULL, NULL, NULL, NULL)",
    "INSERT INTO project_members VALUES (1, 'admin', 'ADMIN')",
    "UPDATE commands SET user_login = 'admin'",
)


def test_an_exported_project_file_is_detected(store, tmp_path):
    """Taguette's "Export project" writes every coder as 'admin' (one user without a
    password, every command and membership rewritten): the import says so and names
    the way that keeps the coders."""
    result = import_taguette(store, make_project(tmp_path, *EXPORTED))
    assert list(result.coders) == ["admin"]
    (notice,) = [n for n in result.notices if "Export project" in n]
    assert "'admin'" in notice and "--project-id" in notice and "live Taguette database" in notice
    # a live database with its own users is not flagged
    again = import_taguette(store, make_project(tmp_path / "live"), gold_set="live")
    assert again.notices == []


@pytest.mark.shared
def test_serdif_is_an_exported_project_file():
    from qualflow.exchange.taguette import read_taguette

    path = needs_shared("corpora", "serdif-usability", "taguette-project.sqlite3")
    project = read_taguette(path)
    assert any("Export project" in n for n in project.notices)
    assert {h.coder for h in project.highlights} == {"admin"}


# ---------------------------------------------------------------------- CSV exports


def test_codebook_csv():
    cb = read_codebook_csv(FIXTURES / "taguette-codebook.csv")
    assert cb.titles() == [
        "Positive experience",
        "Wording not clear",
        "Additional explanation",
        "Simple export",
    ]
    assert cb.get("Positive experience").count == 2


def test_csv_import_matches_the_database_import(store, tmp_path):
    db_result = import_taguette(store, make_project(tmp_path), gold_set="db")
    result = import_taguette_csv(
        store,
        FIXTURES / "taguette-highlights.csv",
        codebook_csv=FIXTURES / "taguette-codebook.csv",
        gold_set="csv",
    )
    assert result.highlights == 5  # 6 ids, one not found in the transcript
    assert len(result.unmatched) == 1 and "highlight 7" in result.unmatched[0]
    assert result.codebook_version == db_result.codebook_version
    db_gold = store.gold("db")["ana"]
    csv_gold = store.gold("csv")["taguette"]
    assert csv_gold == db_gold  # the untagged highlight is absent from the CSV: same codings


def test_csv_errors(store, tmp_path):
    with pytest.raises(TaguetteError, match="missing column"):
        import_taguette_csv(store, FIXTURES / "taguette-highlights-bad.csv")
    with pytest.raises(TaguetteError, match="no such file"):
        import_taguette_csv(store, tmp_path / "absent.csv")
    bad = tmp_path / "codebook.csv"
    bad.write_text("tag,description,number of highlights\nA,x,many\n", encoding="utf-8")
    with pytest.raises(TaguetteError, match="row 2"):
        read_codebook_csv(bad)
    result = import_taguette_csv(store, FIXTURES / "taguette-highlights.csv")
    assert result.highlights == 0
    assert len(result.unmatched) == 6  # no transcripts in the store: every one reported


# ---------------------------------------------------------------------- the real project


@pytest.mark.shared
@pytest.mark.slow
def test_real_serdif_project(store):
    path = needs_shared("corpora", "serdif-usability", "taguette-project.sqlite3")
    result = import_taguette(store, path)
    assert len(result.transcripts) == 11
    assert result.codes == 22
    assert result.highlights == 1166
    assert result.unmatched == [] and result.untagged == [] and result.problems == []

    with open(SERDIF / "codebooks" / "codebook_20220303_8.csv", encoding="utf-8") as fh:
        final = {row["tag"]: row for row in csv.DictReader(fh)}
    codebook = store.codebook(result.codebook_version)
    assert set(codebook.titles()) == set(final)
    for code in codebook.codes:
        assert code.description == final[code.title]["description"].strip()

    # offsets line up: every highlight's text is its snippet with the tags stripped
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    snippets = {str(i): strip_tags(s) for i, s in db.execute("SELECT id, snippet FROM highlights")}
    highlights = load_highlights(store)
    assert len({h.external_id for h in highlights}) == 1166
    texts = {t.id: t.text for t in store.transcripts()}
    for h in highlights:
        assert texts[h.transcript_id][h.char_start : h.char_end] == snippets[h.external_id]

    # every highlight's code is on a passage it overlaps
    gold = store.gold(result.gold_set)["admin"]
    passages = store.passages()
    by_transcript: dict[str, list] = {}
    for p in passages:
        by_transcript.setdefault(p.transcript_id, []).append(p)
    for h in highlights:
        assert any(
            h.code in gold[p.id] and p.char_start < h.char_end and h.char_start < p.char_end
            for p in by_transcript[h.transcript_id]
        ), h.snippet
    coded = sum(1 for codes in gold.values() if codes)
    assert len(gold) == len(passages)
    assert 0.6 < coded / len(passages) < 0.9  # the README: about 77% of sentences coded


@pytest.mark.shared
@pytest.mark.slow
def test_real_serdif_highlights_csv(store):
    path = needs_shared("corpora", "serdif-usability", "taguette-project.sqlite3")
    import_taguette(store, path, gold_set="db")
    result = import_taguette_csv(
        store,
        SERDIF / "highlights.csv",
        codebook_csv=SERDIF / "codebooks" / "codebook_20220303_8.csv",
        gold_set="csv",
    )
    assert result.unmatched == []
    assert result.highlights == 1166
    db_gold = store.gold("db")["admin"]
    csv_gold = store.gold("csv")["taguette"]
    assert csv_gold == db_gold  # located by text alone, the same codings


def test_csv_content_with_speaker_labels_matches_reader_text(store, tmp_path):
    """Readers take 'MODERATOR:' labels out of the text; Taguette's export keeps them."""
    from qualflow.models import Transcript, Turn
    from qualflow.segment import segment

    turns = [("MODERATOR", "Please try the box plot."), ("P1", "It works now. Nice.")]
    text = "\n\n".join(body for _, body in turns)
    spans, pos = [], 0
    for speaker, body in turns:
        spans.append(
            Turn(
                index=len(spans),
                speaker=speaker,
                text=body,
                char_start=pos,
                char_end=pos + len(body),
            )
        )
        pos += len(body) + 2
    t = Transcript(
        id=Transcript.make_id("P1_x", "b" * 64),
        name="P1_x",
        source_path="P1_x.odt",
        content_hash="b" * 64,
        format="odt",
        text=text,
        turns=spans,
    )
    store.save_transcript(t, segment(t, "sentence"))
    highlights = tmp_path / "h.csv"
    highlights.write_text(
        "id,document,tag,content\n"
        '1,P1_x.odt,Moderator assist,"MODERATOR: Please try the box plot. It works now."\n',
        encoding="utf-8",
    )
    result = import_taguette_csv(store, highlights, gold_set="g")
    assert result.unmatched == []
    gold = store.gold("g")["taguette"]
    coded = {p.text: gold[p.id] for p in store.passages()}
    assert coded == {
        "Please try the box plot.": {"Moderator assist"},
        "It works now.": {"Moderator assist"},
        "Nice.": frozenset(),
    }


@pytest.mark.shared
@pytest.mark.slow
def test_real_serdif_csv_onto_ingested_odt_files(store, settings):
    """The usual path without the database: ingest the original ODT files, then the CSV."""
    from qualflow.ingest import ingest_paths

    raw = needs_shared("corpora", "serdif-usability", "raw")
    report = ingest_paths(store, [raw], settings)
    assert report.count("new") == 11
    result = import_taguette_csv(
        store,
        SERDIF / "highlights.csv",
        codebook_csv=SERDIF / "codebooks" / "codebook_20220303_8.csv",
    )
    assert result.unmatched == [] and result.highlights == 1166
    gold = store.gold(result.gold_set)["taguette"]
    coded = sum(1 for codes in gold.values() if codes)
    assert 0.6 < coded / len(gold) < 0.9


def test_each_taguette_user_is_a_gold_coder(store, tmp_path):
    path = make_project(
        tmp_path,
        "INSERT INTO users VALUES ('ben', '2024-01-01 10:00:00', NULL, NULL, 'en_US', NULL, NULL)",
        "INSERT INTO project_members VALUES (1, 'ben', 'MEMBER')",
        "UPDATE commands SET user_login = 'ben' WHERE id IN (4, 5)",
    )
    result = import_taguette(store, path)
    assert result.coders == {"ana": 3, "ben": 3}  # passages coded
    gold = store.gold(result.gold_set)
    assert gold["ben"][passage_with(store, "The colours are nice").id] == {"Positive experience"}
    assert gold["ana"][passage_with(store, "The colours are nice").id] == frozenset()
    # ana highlighted nothing in P2_session: it is not part of her coding
    p2 = passage_with(store, "Exporting was simple")
    assert p2.id not in gold["ana"] and gold["ben"][p2.id] == {"Simple export"}
    assert gold["ana"][passage_with(store, "Okay, I read this").id] == {"Positive experience"}
