"""JSONL gold import: good records by offsets and by text, malformed lines, unknown codes."""

from __future__ import annotations

import hashlib
import json

import pytest

from qualflow.gold import GoldError, export_gold, import_gold
from qualflow.models import Code, Codebook, Passage, Transcript, Turn


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
    assert report.coders == {"ann": 3, "bob": 1}


def test_offsets_spanning_two_passages_code_both(loaded, tmp_path):
    store, p1, _ = loaded
    path = _write(
        tmp_path,
        [{"transcript": "I-1", "start": 0, "end": p1[1].char_end, "codes": ["b"], "coder": "c"}],
    )
    import_gold(store, path, "span")
    assert set(store.gold("span")["c"]) == {p1[0].id, p1[1].id}


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
