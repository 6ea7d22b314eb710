"""JSONL gold: records by offsets are exact spans, by text spans over a passage, ``codes:
[]`` is scope without spans; malformed lines, unknown codes; export -> import keeps
spans and scope."""

from __future__ import annotations

import hashlib
import json

import pytest

from qualflow.gold import GoldError, export_gold, import_gold
from qualflow.models import Code, Codebook, Passage, Span, SpanCoding, Transcript, Turn
from qualflow.store import Store


def _transcript(name: str, sentences: list[str]) -> tuple[Transcript, list[Passage]]:
    text = " ".join(sentences)
    digest = hashlib.sha256(text.encode()).hexdigest()
    tid = Transcript.make_id(name, digest)
    turn = Turn(index=0, speaker="P", text=text, char_start=0, char_end=len(text))
    t = Transcript(
        id=tid,
        name=name,
        source_path=f"{name}.txt",
        content_hash=digest,
        format="txt",
        text=text,
        turns=[turn],
    )
    passages, pos = [], 0
    for i, s in enumerate(sentences):
        start = text.index(s, pos)
        end = start + len(s)
        pos = end
        passages.append(
            Passage(
                id=Passage.make_id(digest, "sentence", start, end),
                transcript_id=tid,
                index=i,
                turn_index=0,
                speaker="P",
                char_start=start,
                char_end=end,
                text=s,
            )
        )
    return t, passages


CODEBOOK = Codebook(name="t", codes=[Code(title="a.x"), Code(title="a.y"), Code(title="b")])


@pytest.fixture
def loaded(store):
    t1, p1 = _transcript("I-1", ["I use benchmarks daily.", "They help me pick models.", "Ok."])
    t2, p2 = _transcript("I-2", ["Scores leak.", "Ok.", "Nobody documents the test set."])
    store.save_transcript(t1, p1)
    store.save_transcript(t2, p2)
    return store, p1, p2


def _write(tmp_path, records: list) -> str:
    path = tmp_path / "gold.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_import_by_offsets_and_text(loaded, tmp_path):
    store, p1, p2 = loaded
    path = _write(
        tmp_path,
        [
            {"transcript": "I-1", "start": 0, "end": 23, "codes": ["a.x"], "coder": "ann"},
            {
                "transcript": "I-1",
                "text": "They help me pick  models.",
                "codes": ["a.y", "b"],
                "coder": "ann",
            },
            {"text": "Nobody documents the test set.", "codes": [], "coder": "ann"},
            {
                "transcript": p2[0].transcript_id,
                "text": "Scores leak",
                "codes": ["b"],
                "coder": "bob",
            },
        ],
    )
    report = import_gold(store, path, "demo", codebook=CODEBOOK)
    assert report.records == 4 and not report.problems, report.problems
    gold = store.gold("demo")
    assert gold["ann"] == {
        p1[0].id: frozenset({"a.x"}),
        p1[1].id: frozenset({"a.y", "b"}),
        p2[2].id: frozenset(),  # explicit "no code"
    }
    assert gold["bob"] == {p2[0].id: frozenset({"b"})}
    assert report.coders == {"ann": 3, "bob": 1}  # spans
    assert report.sentences == {"ann": 2, "bob": 1}
    assert "spans per coder: ann: 3, bob: 1" in report.summary()


def test_offsets_spanning_two_passages_code_both(loaded, tmp_path):
    store, p1, _ = loaded
    path = _write(
        tmp_path,
        [{"transcript": "I-1", "start": 0, "end": p1[1].char_end, "codes": ["b"], "coder": "c"}],
    )
    import_gold(store, path, "span")
    assert set(store.gold("span")["c"]) == {p1[0].id, p1[1].id}
    # one span, as given: not one per passage
    (coding,) = store.gold_codings("span").values()
    assert coding.spans == [Span(p1[0].transcript_id, 0, p1[1].char_end, "b")]
    assert coding.scope == {p1[0].transcript_id: [(0, p1[1].char_end)]}


def test_malformed_lines_are_reported_by_line_and_the_rest_imported(loaded, tmp_path):
    store, p1, _ = loaded
    path = _write(
        tmp_path,
        [
            {"transcript": "I-1", "start": 0, "end": 23, "codes": ["a.x"], "coder": "ann"},
            "{not json",
            '["a list"]',
            {"transcript": "I-9", "start": 0, "end": 5, "codes": [], "coder": "ann"},
            {"transcript": "I-1", "start": 5, "end": 2, "codes": [], "coder": "ann"},
            {"transcript": "I-1", "start": 0, "end": 9999, "codes": [], "coder": "ann"},
            {"text": "Ok.", "codes": [], "coder": "ann"},
            {"text": "never said", "codes": [], "coder": "ann"},
            {"transcript": "I-1", "start": 0, "end": 23, "codes": "a.x", "coder": "ann"},
            {"transcript": "I-1", "start": 0, "end": 23, "codes": []},
            {"codes": [], "coder": "ann"},
            {"transcript": "I-1", "start": 24, "end": 49, "codes": ["a.y", "zz"], "coder": "ann"},
        ],
    )
    report = import_gold(store, path, "demo", codebook=CODEBOOK)
    problems = "\n".join(report.problems)
    expected = {
        2: "not valid JSON",
        3: "must be a JSON object",
        4: "unknown transcript 'I-9'",
        5: "0 <= start < end",
        6: "past the end",
        7: "matches 2 passages",
        8: "no passage has or contains",
        9: "'codes' must be a list",
        10: "missing 'coder'",
        11: "needs 'start' and 'end'",
        12: "not in the codebook",
    }
    for line, reason in expected.items():
        assert f"gold.jsonl:{line}: " in problems and reason in problems, (line, reason)
    for line in expected:
        assert any(p.split(": ", 1)[0].endswith(f":{line}") for p in report.problems), line
    assert report.records == 2  # line 1 and line 12 (with 'zz' left out)
    assert report.unknown_codes == {"zz": 1}
    assert store.gold("demo")["ann"][p1[1].id] == frozenset({"a.y"})
    assert "unknown codes left out" in report.summary()


def test_unusable_files_raise_clear_errors(loaded, tmp_path, store):
    with pytest.raises(GoldError, match="no such file"):
        import_gold(loaded[0], tmp_path / "missing.jsonl", "x")
    bad = _write(tmp_path, ["{oops"])
    with pytest.raises(GoldError, match="no valid record"):
        import_gold(loaded[0], bad, "x")


def test_export_round_trip(loaded, tmp_path):
    store, p1, _ = loaded
    store.save_gold("g", "ann", {p1[0].id: frozenset({"a.x"}), p1[1].id: frozenset()})
    out = tmp_path / "out.jsonl"
    assert export_gold(store, "g", out) == 2
    import_gold(store, out, "g2")
    assert store.gold("g2") == store.gold("g")


# ---------------------------------------------------------------------- spans


def test_a_record_with_offsets_is_an_exact_span(loaded, tmp_path):
    """A highlight inside a sentence stays the highlight (before spans it became its
    whole sentence); its range is the coder's scope; codes: [] is scope without span."""
    store, p1, p2 = loaded
    tid = p1[0].transcript_id
    text = store.transcript(tid).text
    start = text.index("benchmarks daily")
    path = _write(
        tmp_path,
        [
            {"transcript": "I-1", "start": start, "end": start + 16, "codes": ["a.x", "b"]},
            {"transcript": "I-1", "start": start, "end": start + 10, "codes": ["a.y"]},
            {"transcript": "I-2", "text": "Scores leak.", "codes": ["b"]},
            {"transcript": "I-2", "start": p2[2].char_start, "end": p2[2].char_end, "codes": []},
        ],
    )
    report = import_gold(store, path, "exact", coder="ann", codebook=CODEBOOK)
    assert not report.problems and report.coders == {"ann": 4}
    (coding,) = store.gold_codings("exact").values()
    t2 = p2[0].transcript_id
    assert sorted(coding.spans) == sorted(
        [
            Span(tid, start, start + 16, "a.x"),
            Span(tid, start, start + 16, "b"),
            Span(tid, start, start + 10, "a.y"),
            Span(t2, p2[0].char_start, p2[0].char_end, "b"),  # by text: over its passage
        ]
    )
    assert coding.scope == {
        tid: [(start, start + 16)],
        t2: [(p2[0].char_start, p2[0].char_end), (p2[2].char_start, p2[2].char_end)],
    }
    assert [text[s.start : s.end] for s in coding.spans if s.code == "a.x"] == ["benchmarks daily"]
    # on the sentence grid: sentences the coder read whole are judged ("no code" too);
    # a sentence of which only a stretch was coded, or none, is not
    gold = store.gold("exact")["ann"]
    assert gold == {p2[0].id: frozenset({"b"}), p2[2].id: frozenset()}


def test_offsets_must_match_the_text_given_with_them(loaded, tmp_path):
    store, p1, _ = loaded
    path = _write(
        tmp_path,
        [
            {"transcript": "I-1", "start": 0, "end": 5, "text": "I use", "codes": ["b"]},
            {"transcript": "I-1", "start": 0, "end": 5, "text": "Scores", "codes": ["b"]},
            {"transcript": "I-1", "start": 23, "end": 24, "codes": ["b"]},
        ],
    )
    report = import_gold(store, path, "t", coder="ann")
    assert report.records == 1
    assert "gold.jsonl:2: 'text' is not the text at [0, 5) of 'I-1'" in report.problems[0]
    assert "gold.jsonl:3: [23, 24) of 'I-1' holds only blanks" in report.problems[1]
    assert p1


def test_reimport_replaces_and_other_text_stays(loaded, tmp_path):
    store, p1, p2 = loaded
    first = _write(tmp_path, [{"transcript": "I-1", "start": 0, "end": 5, "codes": ["a.x"]}])
    import_gold(store, first, "r", coder="ann")
    import_gold(store, first, "r", coder="ann")  # twice: stored once
    (coding,) = store.gold_codings("r").values()
    assert len(coding.spans) == 1
    second = tmp_path / "second.jsonl"
    second.write_text(
        json.dumps({"transcript": "I-2", "start": 0, "end": 6, "codes": ["b"]})
        + "\n"
        + json.dumps({"transcript": "I-1", "start": 0, "end": 23, "codes": ["a.y"]})
        + "\n"
    )
    import_gold(store, second, "r", coder="ann")
    (coding,) = store.gold_codings("r").values()
    # [0, 5) lies inside the newly coded [0, 23): replaced; I-2 added
    assert sorted((s.start, s.end, s.code) for s in coding.spans) == [(0, 6, "b"), (0, 23, "a.y")]
    assert p1 and p2


def _same_transcripts(src: Store, dst: Store) -> None:
    for t in src.transcripts():
        dst.save_transcript(t, src.passages(transcript_id=t.id))


def test_export_import_round_trip_keeps_spans_and_scope(loaded, tmp_path):
    store, p1, p2 = loaded
    t1, t2 = p1[0].transcript_id, p2[0].transcript_id
    text1 = store.transcript(t1).text
    inside = text1.index("benchmarks")
    across = (p1[0].char_start + 6, p1[1].char_start + 9)  # over two sentences
    ann = SpanCoding(
        "ann",
        [
            Span(t1, inside, inside + 10, "a.x"),
            Span(t1, inside, inside + 10, "b"),
            Span(t1, *across, "a.y"),
            Span(t2, p2[0].char_start, p2[0].char_end, "b"),
        ],
        # I-1 read whole (a Taguette-style scope); in I-2 two sentences, one without code
        {
            t1: [(0, len(text1))],
            t2: [(p2[0].char_start, p2[0].char_end), (p2[2].char_start, p2[2].char_end)],
        },
    )
    bob = SpanCoding("bob", [], {t2: [(p2[1].char_start, p2[1].char_end)]})  # only "no code"
    for coding in (ann, bob):
        store.save_gold_coding("g", coding)
    out = tmp_path / "g.jsonl"
    n = export_gold(store, "g", out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert n == len(records) == 6  # 3 stretches + ann's I-1 and I-2 "no code", bob's one
    for r in records:
        t = store.transcript(t1 if r["transcript"] == "I-1" else t2)
        assert r["text"] == t.text[r["start"] : r["end"]]
    assert {"transcript": "I-1", "start": inside, "end": inside + 10} | {
        "text": "benchmarks",
        "codes": ["a.x", "b"],
        "coder": "ann",
    } in records
    fresh = Store.open(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    try:
        _same_transcripts(store, fresh)
        report = import_gold(fresh, out, "back")
        assert not report.problems and report.records == 6
        back = fresh.gold_codings("back")
        original = store.gold_codings("g")
        assert set(back) == set(original) == {"ann", "bob"}
        for coder in original:
            assert sorted(back[coder].spans) == sorted(original[coder].spans), coder
            assert back[coder].scope == original[coder].scope, coder
    finally:
        fresh.close()


def test_export_names_an_earlier_version_by_id(loaded, tmp_path):
    store, p1, _ = loaded
    old = p1[0].transcript_id
    store.save_gold_coding("v", SpanCoding("ann", [Span(old, 0, 5, "b")], {old: [(0, 5)]}))
    t, passages = _transcript("I-1", ["I use benchmarks weekly now.", "Ok."])
    store.save_transcript(t, passages)  # a new version of I-1 becomes current
    out = tmp_path / "v.jsonl"
    export_gold(store, "v", out)
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["transcript"] == old and record["text"] == "I use"
    import_gold(store, out, "v2")
    assert store.gold_codings("v2")["ann"].spans == [Span(old, 0, 5, "b")]


def test_gold_cli_export_then_import(tmp_path):
    """`qualflow gold export` then `gold import` into another workspace with the same
    transcript: the same spans and scope, problems reported by line."""
    from typer.testing import CliRunner

    from qualflow.cli import app
    from qualflow.settings import load_settings
    from qualflow.store import open_store

    runner = CliRunner()
    a, b = tmp_path / "a", tmp_path / "b"
    for ws in (a, b):
        assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
        res = runner.invoke(app, ["ingest", "examples/I-3_interview.txt", "-w", str(ws)])
        assert res.exit_code == 0, res.output
    store = open_store(load_settings(a))
    try:
        (t,) = store.transcripts()
        start = t.text.index("false comfort")
        coding = SpanCoding(
            "ann",
            [Span(t.id, start, start + 13, "06.risks.rewards.risks")],
            {t.id: [(start - 20, start + 40)]},
        )
        store.save_gold_coding("g", coding)
    finally:
        store.close()
    out = tmp_path / "g.jsonl"
    res = runner.invoke(app, ["gold", "export", "g", str(out), "-w", str(a)])
    assert res.exit_code == 0 and "wrote 2 records" in res.output, res.output
    out.write_text(out.read_text(encoding="utf-8") + "{broken\n", encoding="utf-8")
    res = runner.invoke(app, ["gold", "import", str(out), "--set", "g", "-w", str(b)])
    assert res.exit_code == 0, res.output
    assert "2/3 records imported" in res.output and "g.jsonl:3: not valid JSON" in res.output
    assert "spans per coder: ann: 1" in res.output
    store = open_store(load_settings(b))
    try:
        assert store.gold_codings("g")["ann"] == coding
    finally:
        store.close()
