"""Exchange keeps spans: readers give SpanCodings, the .qdpx writer takes them, and a
highlight comes back on exactly its text after import -> export -> import."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pytest
from lxml import etree

from qualflow.exchange.qdpx_export import (
    ExportCoder,
    ExportPlan,
    ExportSource,
    ExportUser,
    project_xml,
)
from qualflow.exchange.refiqda import export_qdpx, find_schema_dir, import_qdpx, read_qdpx
from qualflow.exchange.spans import load_gold_spans, save_gold_spans
from qualflow.exchange.taguette import import_taguette, read_taguette
from qualflow.highlights import Highlight, load_highlights
from qualflow.models import Span, SpanCoding
from qualflow.store import Store
from tests.conftest import needs_shared
from tests.fixtures.exchange.study import CODEBOOK, make_transcript
from tests.test_exchange_refiqda import zip_project
from tests.test_exchange_taguette import make_project

NS = {"q": "urn:QDA-XML:project:1.0"}
CAFE = "café — naïve"


def cafe_project(tmp_path: Path) -> Path:
    """The small Taguette fixture plus a document with a highlight on exactly
    "café — naïve", in the middle of a sentence (offsets are UTF-8 bytes into the
    tag-stripped, entity-decoded text, as Taguette stores them)."""
    contents = (
        "<p>Moderator: what did you think?</p>\n"
        "<p>It felt like a caf&eacute; &mdash; na&iuml;ve of me, but I liked it.</p>"
    )
    text = "Moderator: what did you think?\nIt felt like a café — naïve of me, but I liked it."
    start = len(text[: text.index(CAFE)].encode("utf-8"))
    end = start + len(CAFE.encode("utf-8"))
    quoted = contents.replace("'", "''")
    return make_project(
        tmp_path,
        "INSERT INTO documents VALUES (3, 'P3_cafe.odt', '', 'P3_cafe.odt', "
        f"'2024-01-02 09:00:00', 1, 'LEFT_TO_RIGHT', '{quoted}')",
        f"INSERT INTO highlights VALUES (7, 3, {start}, {end}, '{CAFE}')",
        "INSERT INTO highlight_tags VALUES (7, 1)",
        "INSERT INTO commands VALUES (7, '2024-01-02 09:05:00', 'ana', 1, 3, "
        '\'{"type": "highlight_add", "highlight_id": 7}\')',
    )


def fresh_store(tmp_path: Path, name: str = "fresh") -> Store:
    return Store.open(f"sqlite:///{tmp_path / (name + '.sqlite3')}")


def highlights_by_selection(store: Store, source: str | None = None) -> Counter:
    """Each highlight (a tool highlight or selection: rows sharing an external id) as
    (transcript name, start, end, codes), counted."""
    names = {t.id: t.name for t in store.transcripts(current_only=False)}
    groups: dict[tuple, set] = {}
    for h in load_highlights(store, source=source):
        key = (h.transcript_id, h.external_id)
        groups.setdefault(key, {"at": (names[h.transcript_id], h.char_start, h.char_end)})
        groups[key].setdefault("codes", set())
        if h.code:
            groups[key]["codes"].add(h.code)
    return Counter((*g["at"], frozenset(g["codes"])) for g in groups.values())


# ---------------------------------------------------------------------- readers


def test_taguette_reader_gives_each_coder_exact_spans(tmp_path):
    project = read_taguette(make_project(tmp_path))
    (coding,) = project.span_codings()
    assert coding.coder == "ana"
    texts = {d.transcript.id: d.transcript.text for d in project.documents}
    # one coder: every document is in scope, whole
    assert coding.scope == {tid: [(0, len(text))] for tid, text in texts.items()}
    got = sorted((texts[s.transcript_id][s.start : s.end], s.code) for s in coding.spans)
    assert got == sorted(
        [
            ("Okay, I read this – the text is “clear” & short.", "Positive experience"),
            ("I’m not sure what x < y means here.", "Wording not clear"),
            ("I’m not sure what x < y means here.", "Additional explanation"),
            ("The colours are nice.", "Positive experience"),
            ("Exporting was simple. I’d use it again.", "Simple export"),
            ("Naïve question", "Wording not clear"),
        ]
    )  # the untagged highlight 3 is a highlight, never a span with a code


def test_taguette_reader_scopes_each_of_several_coders(tmp_path):
    path = make_project(
        tmp_path,
        "INSERT INTO users VALUES ('ben', '2024-01-01 10:00:00', NULL, NULL, 'en_US', NULL, NULL)",
        "UPDATE commands SET user_login = 'ben' WHERE id = 5",
    )
    project = read_taguette(path)
    codings = {c.coder: c for c in project.span_codings()}
    p2 = next(d.transcript for d in project.documents if d.transcript.name == "P2_session")
    assert set(codings["ben"].scope) == {p2.id}  # ben highlighted only in P2_session
    assert p2.id not in codings["ana"].scope
    assert [s.code for s in codings["ben"].spans] == ["Simple export"]


def test_refi_reader_gives_each_user_exact_spans(tmp_path):
    project = read_qdpx(zip_project(tmp_path), schema_dir=find_schema_dir())
    codings = {c.coder: c for c in project.span_codings()}
    assert set(codings) == {"ana", "BO"}
    interview = project.sources[0].transcript(project.path)
    text = interview.text
    assert [(text[s.start : s.end], s.code) for s in codings["BO"].spans] == [
        ("Täglich – ehrlich gesagt.", "use.frequency"),
        ("Nein, danke.", "closing"),
    ]
    assert codings["BO"].scope == {interview.id: [(0, len(text))]}  # BO never coded the memo
    assert len(codings["ana"].scope) == 2


# ---------------------------------------------------------------------- the store layer


def test_gold_spans_store_round_trip(store):
    t = make_transcript("I-9", [("I-9", "One café — naïve remark. Then another one.")])
    from qualflow.segment import segment

    store.save_transcript(t, segment(t, "sentence"))
    start = t.text.index(CAFE)
    coding = SpanCoding(
        "zoe", [Span(t.id, start, start + len(CAFE), "x")], {t.id: [(0, len(t.text))]}
    )
    rows = [
        Highlight(
            transcript_id=t.id,
            char_start=start,
            char_end=start + len(CAFE),
            code="x",
            coder="zoe",
            external_id="h1",
        )
    ]
    coded = save_gold_spans(
        store, "g", [coding], rows, codebook_version=None, segmentation="sentence"
    )
    assert coded == {"zoe": 1}
    (back,) = load_gold_spans(store, "g", {"zoe": {t.id: [[0, len(t.text)]]}})
    assert back.coding.spans == coding.spans and back.coding.scope == coding.scope
    assert t.text[back.coding.spans[0].start : back.coding.spans[0].end] == CAFE
    # the passage-level projection still exists for passage readers: the sentence with
    # the span carries the code, the other one "no code"
    gold = store.gold("g")["zoe"]
    assert sorted(map(sorted, gold.values())) == [[], ["x"]]


def test_passage_gold_becomes_spans_over_its_passages(store):
    from tests.fixtures.exchange.study import build_study

    handles = build_study(store)
    (ann,) = load_gold_spans(store, "gold-a")
    daily = handles["passages"]["daily"]
    assert Span(
        daily.transcript_id, daily.char_start, daily.char_end, "01.use.frequency.daily"
    ) in (ann.coding.spans)
    scoped = {r for ranges in ann.coding.scope.values() for r in ranges}
    assert len(scoped) == len(handles["gold"])  # every passage ann coded, "no code" too
    assert not ann.from_highlights


# ---------------------------------------------------------------------- the writer


def test_writer_takes_span_codings_as_they_are():
    t = make_transcript("I-7", [("I-7", "I like the café — naïve, I know. Nothing else.")])
    start = t.text.index(CAFE)
    user = ExportUser(key="gold:x:zoe", name="zoe", kind="gold")
    coding = SpanCoding(
        "zoe",
        [Span(t.id, start, start + len(CAFE), "02.selection")],
        {t.id: [(0, 31), (32, len(t.text))]},
    )
    plan = ExportPlan(
        name="p",
        codebook=CODEBOOK,
        sources=[ExportSource(t, "00000000-0000-0000-0000-0000000000aa")],
        coders=[ExportCoder(user, coding)],
        users=[user],
    )
    data, _, report = project_xml(plan)
    root = etree.fromstring(data)
    sels = root.findall(".//q:PlainTextSelection", NS)
    coded = [s for s in sels if s.find("q:Coding", NS) is not None]
    assert [(int(s.get("startPosition")), int(s.get("endPosition"))) for s in coded] == [
        (start, start + len(CAFE))
    ]
    # the scope range no span touches is an explicit "no code applies"
    (empty,) = [s for s in sels if s.find("q:Coding", NS) is None]
    assert (int(empty.get("startPosition")), int(empty.get("endPosition"))) == (32, len(t.text))
    assert empty.findtext("q:Description", namespaces=NS) == "no code applies"
    assert {s.get("creatingUser") for s in sels} == {user.guid}
    assert report.selections == 2 and report.codings == 1


# ---------------------------------------------------------------------- round trips


def test_cafe_highlight_comes_back_exactly(store, tmp_path):
    result = import_taguette(store, cafe_project(tmp_path))
    assert result.unmatched == []
    out = tmp_path / "cafe.qdpx"
    export_qdpx(store, out, schema_dir=find_schema_dir())
    fresh = fresh_store(tmp_path)
    try:
        back = import_qdpx(fresh, out, schema_dir=find_schema_dir(), gold_set="g")
        assert back.problems == []
        cafe = next(t for t in fresh.transcripts() if t.name == "P3_cafe")
        (h,) = [h for h in load_highlights(fresh) if h.transcript_id == cafe.id]
        assert cafe.text[h.char_start : h.char_end] == CAFE
        assert h.snippet == CAFE and h.code == "Positive experience"
        original = next(t for t in store.transcripts() if t.name == "P3_cafe")
        assert (h.char_start, h.char_end) == (
            original.text.index(CAFE),
            original.text.index(CAFE) + len(CAFE),
        )
        # and the span reached the reader of the re-import as it was
        (coding,) = back.span_codings
        assert Span(cafe.id, h.char_start, h.char_end, "Positive experience") in coding.spans
        assert highlights_by_selection(fresh) == highlights_by_selection(store)
    finally:
        fresh.close()


@pytest.mark.shared
def test_qc_demo_codings_stay_on_their_spans(store, tmp_path):
    """import -> export -> import of a project another tool wrote keeps all 205 codings
    on their original spans, with their coder."""
    path = needs_shared("refi-qda", "qc-demo.qdpx")
    schema = find_schema_dir()
    original = read_qdpx(path, schema_dir=schema)
    titles = original.code_titles()
    expected = Counter(
        (
            src.name,
            sel.start,
            sel.end,
            titles[c.code_guid],
            original.user_label(c.user_guid),
        )
        for src in original.sources
        for sel in src.selections
        for c in sel.codings
    )
    assert sum(expected.values()) == 205
    import_qdpx(store, path, schema_dir=schema)
    out = tmp_path / "qc.qdpx"
    export_qdpx(store, out, schema_dir=schema)
    again = read_qdpx(out, schema_dir=schema)
    titles = again.code_titles()
    got = Counter(
        (src.name, sel.start, sel.end, titles[c.code_guid], again.user_label(c.user_guid))
        for src in again.sources
        for sel in src.selections
        for c in sel.codings
    )
    assert got == expected
    fresh = fresh_store(tmp_path)
    try:
        import_qdpx(fresh, out, schema_dir=schema, gold_set="g")
        assert highlights_by_selection(fresh) == highlights_by_selection(store)
    finally:
        fresh.close()


@pytest.mark.shared
def test_serdif_taguette_project_through_qdpx_keeps_every_highlight(store, tmp_path):
    """The SERDIF Taguette project -> .qdpx -> a fresh store: the same 1,166 highlights
    with the same codes and offsets."""
    taguette = needs_shared("corpora", "serdif-usability", "taguette-project.sqlite3")
    result = import_taguette(store, taguette)
    out = tmp_path / "serdif.qdpx"
    report = export_qdpx(store, out, schema_dir=find_schema_dir())
    assert report.selections == 1166 and report.codings == 1261
    original = highlights_by_selection(store, result.gold_set)
    assert sum(original.values()) == 1166
    fresh = fresh_store(tmp_path)
    try:
        back = import_qdpx(fresh, out, schema_dir=find_schema_dir(), gold_set="g")
        assert back.problems == [] and back.selections == 1166 and back.codings == 1261
        assert highlights_by_selection(fresh, "g") == original
        (coding,) = back.span_codings
        assert coding.coder == "admin" and len(coding.spans) == 1261
    finally:
        fresh.close()


@pytest.mark.shared
@pytest.mark.slow
def test_serdif_highlights_on_the_raw_odt_files_through_qdpx(store, settings, tmp_path):
    """The usual path without the database (ingest raw/ ODTs, import Taguette's
    highlights CSV onto them), then .qdpx and back: the same 1,166 highlights on the
    same offsets of the ODT text."""
    from qualflow.exchange.taguette import import_taguette_csv
    from qualflow.ingest import ingest_paths

    raw = needs_shared("corpora", "serdif-usability", "raw")
    ingest_paths(store, [raw], settings)
    csv_path = needs_shared("corpora", "serdif-usability", "highlights.csv")
    result = import_taguette_csv(store, csv_path, gold_set="csv")
    assert result.highlights == 1166 and result.unmatched == []
    out = tmp_path / "odt.qdpx"
    export_qdpx(store, out, schema_dir=find_schema_dir(), gold_sets=["csv"])
    fresh = fresh_store(tmp_path)
    try:
        import_qdpx(fresh, out, schema_dir=find_schema_dir(), gold_set="g")
        back = highlights_by_selection(fresh, "g")
        assert back == highlights_by_selection(store, "csv")
        assert sum(back.values()) == 1166
    finally:
        fresh.close()


def test_exported_selections_point_at_the_exported_text(store, tmp_path):
    import_taguette(store, cafe_project(tmp_path))
    out = tmp_path / "cafe.qdpx"
    export_qdpx(store, out, check_schema=False)
    with zipfile.ZipFile(out) as zf:
        root = etree.fromstring(zf.read("project.qde"))
        for src in root.iterfind(".//q:TextSource", NS):
            text = zf.read(
                "sources/" + src.get("plainTextPath").removeprefix("internal://")
            ).decode("utf-8")
            for sel in src.iterfind("q:PlainTextSelection", NS):
                a, b = int(sel.get("startPosition")), int(sel.get("endPosition"))
                assert 0 <= a < b <= len(text)
    highlights = {h.snippet for h in load_highlights(store) if h.code}
    assert CAFE in highlights


# ---------------------------------------------------------------------- sentences


def _sentence(tid: str, start: int, end: int):
    from qualflow.models import Passage

    return Passage(
        id=f"s{start}",
        transcript_id=tid,
        index=start,
        turn_index=0,
        char_start=start,
        char_end=end,
        text="x" * (end - start),
    )


def test_sentence_projection_rule():
    """A sentence carries C when C's spans together cover half of it or one lies inside
    it, a stretch that reaches no sentence so goes to its largest overlap; sentences
    outside the scope are not judged, untouched ones carry no code."""
    from qualflow.exchange.spans import project_to_sentences

    s = [_sentence("t", 0, 100), _sentence("t", 100, 200), _sentence("t", 200, 300)]
    s.append(_sentence("t", 300, 400))
    coding = SpanCoding(
        "c",
        [
            Span("t", 10, 40, "a"),  # a: 30 + 30 characters of the first sentence
            Span("t", 60, 90, "a"),
            Span("t", 0, 40, "b"),  # b: 40 of 100, but lies inside: carried
            Span("t", 90, 140, "c"),  # c: 10 of the first, 40 of the second: the second
            Span("t", 150, 260, "d"),  # d: half of the second, 60 of the third
            Span("u", 0, 100, "a"),  # another transcript
        ],
        {"t": [(0, 300)]},
    )
    got = project_to_sentences(coding, s)
    assert got == {
        "s0": frozenset({"a", "b"}),
        "s100": frozenset({"c", "d"}),
        "s200": frozenset({"d"}),
    }  # s300 lies outside the scope: not judged
    assert project_to_sentences(coding, s, threshold=0.6)["s100"] == {"c"}  # d: s200 only
    with pytest.raises(ValueError, match="threshold"):
        project_to_sentences(coding, s, threshold=0)


@pytest.mark.shared
def test_serdif_gold_through_jsonl_keeps_spans_and_scope(store, tmp_path):
    """The SERDIF Taguette gold exported as JSONL and imported into a fresh store with
    the same transcripts: the same 1,261 spans (1,166 highlights) and the same scope."""
    from qualflow.gold import export_gold, import_gold

    taguette = needs_shared("corpora", "serdif-usability", "taguette-project.sqlite3")
    result = import_taguette(store, taguette)
    out = tmp_path / "serdif.jsonl"
    export_gold(store, result.gold_set, out)
    fresh = fresh_store(tmp_path)
    try:
        for t in store.transcripts():
            fresh.save_transcript(t, store.passages(transcript_id=t.id))
        report = import_gold(fresh, out, "back")
        assert report.problems == [] and report.sentences == {"admin": 2340}
        (before,) = store.gold_codings(result.gold_set).values()
        (after,) = fresh.gold_codings("back").values()
        assert len(before.spans) == 1261
        assert sorted(after.spans) == sorted(before.spans)
        assert after.scope == before.scope
    finally:
        fresh.close()
