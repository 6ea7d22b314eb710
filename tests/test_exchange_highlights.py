"""Highlights -> passage codings: the overlap rule of qualflow.highlights."""

from __future__ import annotations

import pytest

from qualflow.highlights import Highlight, covers, load_highlights, map_highlights, save_highlights
from qualflow.models import Passage, Transcript, Turn

TEXT = "First sentence here. Second one is longer than the first. Third."


def _passages() -> list[Passage]:
    spans = [(0, 20), (21, 57), (58, 64)]
    return [
        Passage(
            id=f"p{i}",
            transcript_id="t",
            index=i,
            turn_index=0,
            char_start=s,
            char_end=e,
            text=TEXT[s:e],
        )
        for i, (s, e) in enumerate(spans)
    ]


def _h(start: int, end: int, code: str | None = "A", coder: str = "c1") -> Highlight:
    return Highlight(
        transcript_id="t",
        char_start=start,
        char_end=end,
        code=code,
        coder=coder,
        snippet=TEXT[start:end],
    )


def test_passage_text_matches_offsets():
    for p in _passages():
        assert TEXT[p.char_start : p.char_end] == p.text


def test_majority_overlap_codes_the_passage():
    p0, p1, _ = _passages()
    # covers 12 of the 20 characters of p0 -> coded; touches p1 by 0 characters
    coding = map_highlights(_passages(), [_h(8, 20)])
    assert coding == {"p0": frozenset({"A"}), "p1": frozenset(), "p2": frozenset()}
    assert covers(_h(8, 20), p0)
    assert not covers(_h(8, 20), p1)


def test_minor_overlap_of_a_long_highlight_does_not_code():
    # a highlight over all of p1 spilling 3 characters into p0 (a 20-char passage)
    coding = map_highlights(_passages(), [_h(17, 57)])
    assert coding["p1"] == {"A"}
    assert coding["p0"] == frozenset()


def test_short_highlight_inside_a_long_passage_codes_it():
    # 'longer' inside p1: 6 of 36 characters, but entirely inside
    start = TEXT.index("longer")
    coding = map_highlights(_passages(), [_h(start, start + 6)])
    assert coding["p1"] == {"A"}


def test_blank_ends_do_not_break_containment():
    # ' Second' starts one blank before p1: still counts as inside p1
    coding = map_highlights(_passages(), [_h(20, 27)])
    assert coding["p1"] == {"A"}
    assert coding["p0"] == frozenset()


def test_fallback_to_largest_overlap():
    # 6 chars of p0 and 5 of p1, inside neither, under half of each: goes to p0
    h = _h(14, 26)
    assert not any(covers(h, p) for p in _passages())
    coding = map_highlights(_passages(), [h])
    assert coding["p0"] == {"A"}
    assert coding["p1"] == frozenset()


def test_several_codes_and_no_code_highlights():
    hs = [_h(0, 20, "A"), _h(0, 20, "B"), _h(21, 57, None)]
    coding = map_highlights(_passages(), hs)
    assert coding["p0"] == {"A", "B"}
    assert coding["p1"] == frozenset()  # an untagged highlight is no code


def test_min_overlap_threshold():
    h = _h(8, 20)  # 60% of p0
    assert map_highlights(_passages(), [h], min_overlap=0.5)["p0"] == {"A"}
    # at 0.9 the rule (a) fails, and the fallback still attaches it to p0 (only one touched)
    assert map_highlights(_passages(), [h], min_overlap=0.9)["p0"] == {"A"}
    two = [_h(8, 20), _h(21, 40)]
    coding = map_highlights(_passages(), two, min_overlap=0.9)
    assert coding["p1"] == {"A"}  # fallback: largest overlap
    with pytest.raises(ValueError, match="min_overlap"):
        map_highlights(_passages(), [h], min_overlap=0)


def test_other_transcripts_are_ignored():
    h = Highlight(transcript_id="other", char_start=0, char_end=20, code="A", snippet="")
    assert map_highlights(_passages(), [h]) == {p.id: frozenset() for p in _passages()}


def test_highlights_round_trip_through_the_store(store):
    t = Transcript(
        id="t",
        name="t",
        source_path="t.txt",
        content_hash="h" * 64,
        format="txt",
        text=TEXT,
        turns=[Turn(index=0, text=TEXT, char_start=0, char_end=len(TEXT))],
    )
    store.save_transcript(t, _passages())
    hs = [_h(0, 20, "A"), _h(21, 57, None, coder="c2")]
    assert save_highlights(store, "test", hs) == 2
    assert save_highlights(store, "test", hs) == 2  # replaces, does not duplicate
    back = load_highlights(store, source="test")
    assert [(h.char_start, h.char_end, h.code, h.coder) for h in back] == [
        (0, 20, "A", "c1"),
        (21, 57, None, "c2"),
    ]
    assert load_highlights(store, source="nope") == []


def test_passages_by_ids_in_chunks(store):
    from qualflow.highlights import passages_by_ids

    t = Transcript(
        id="t",
        name="t",
        source_path="t.txt",
        content_hash="h" * 64,
        format="txt",
        text=TEXT,
        turns=[Turn(index=0, text=TEXT, char_start=0, char_end=len(TEXT))],
    )
    store.save_transcript(t, _passages())
    got = passages_by_ids(store, ["p2", "p0", "p1", "p0", "nope"], chunk=2)
    assert sorted(p.id for p in got) == ["p0", "p1", "p2"]
