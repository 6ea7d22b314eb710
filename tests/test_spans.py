"""Span codings: normal form, projection onto grids, span-level agreement, coverage.

Every figure here is computed by hand in the comments next to it (offsets only; the
transcript text does not matter to these functions).
"""

from __future__ import annotations

import pytest

from qualflow import agreement as ag
from qualflow import spans as sp
from qualflow.models import Span, SpanCoding, Transcript, Turn


def coding(name: str, spans: list[tuple], scope: dict[str, list[tuple[int, int]]]) -> SpanCoding:
    """spans as (start, end, code) in transcript "t", or (transcript, start, end, code)."""
    out = [Span("t", *s) if len(s) == 3 else Span(*s) for s in spans]
    return SpanCoding(coder=name, spans=out, scope=scope)


def unit(uid: str, start: int, end: int, tid: str = "t") -> sp.Unit:
    return sp.Unit(uid, tid, start, end)


# --------------------------------------------------------------------------- normal form


def test_merge_ranges_sorts_merges_overlapping_and_touching_and_drops_empty():
    assert sp.merge_ranges([(5, 8), (0, 3), (3, 4), (10, 10), (7, 9)]) == [(0, 4), (5, 9)]
    assert sp.merge_ranges([]) == []
    assert sp.intersect_ranges([(0, 10), (20, 30)], [(5, 25)]) == [(5, 10), (20, 25)]
    assert sp.overlap_with([(0, 10), (20, 30)], 5, 25) == 10
    assert sp.overlap_with([(0, 10), (20, 30)], 10, 20) == 0


def test_normalize_merges_same_code_spans_and_scope():
    c = coding(
        "a",
        [(3, 8, "A"), (0, 5, "A"), (8, 10, "A"), (2, 4, "B"), (12, 15, "A"), (6, 6, "B")],
        {"t": [(10, 20), (0, 10)], "u": []},
    )
    n = sp.normalize(c)
    # A: [0,5)+[3,8) overlap, [8,10) touches -> [0,10); [12,15) stays apart; B's empty span goes
    assert n.spans == [Span("t", 0, 10, "A"), Span("t", 2, 4, "B"), Span("t", 12, 15, "A")]
    assert n.scope == {"t": [(0, 20)]}  # touching ranges merged, empty transcript dropped
    assert n.coder == "a"
    assert sp.code_coverage(c) == {"A": 13, "B": 2}  # A: 10 + 3, B: 2
    assert sp.scope_length(c) == 20
    assert sp.normalize(n) == n  # idempotent


# --------------------------------------------------------------------------- projection

SENTENCES = [unit("s1", 0, 10), unit("s2", 10, 20), unit("s3", 20, 30), unit("s4", 30, 40)]
GRID_CODING = coding(
    "a",
    [
        (5, 12, "A"),  # s1: 5 of 10 characters = half -> A; s2: 2/10, not inside -> no A
        (12, 14, "B"),  # 2 of s2's 10, but inside s2 -> B
        (8, 13, "C"),  # s1: 2/10, s2: 3/10, inside neither -> the larger share, s2
        (15, 26, "D"),  # s2: 5/10 -> D; s3: 6/10 -> D
        (7, 13, "F"),  # with the next: s2 3 + 4 = 7/10 -> F; alone each < half,
        (16, 23, "F"),  # and neither lies inside s2; s1 3/10, s3 3/10 -> no F
        (14, 15, "G"),  # inside s2 -> G (for the turns: touches T1 only at its start)
        (32, 38, "A"),  # inside s4, but s4 is outside the scope
    ],
    {"t": [(0, 30)]},
)


def test_sentence_projection_half_coverage_inside_and_scope():
    got = sp.to_sentences(GRID_CODING, SENTENCES)
    assert got == {
        "s1": frozenset({"A"}),
        "s2": frozenset({"B", "C", "D", "F", "G"}),
        "s3": frozenset({"D"}),
    }
    assert "s4" not in got  # outside the scope: absent, not "no code"
    # without the orphan rule the straddling C reaches no sentence
    assert sp.to_sentences(GRID_CODING, SENTENCES, orphans=False)["s2"] == {"B", "D", "F", "G"}


def test_sentence_projection_orphans_go_to_the_largest_overlap():
    sentences = [unit("s1", 0, 10), unit("s2", 11, 21), unit("s3", 22, 40)]
    got = sp.to_sentences(
        coding(
            "a",
            [
                (7, 14, "A"),  # s1 3/10, s2 3/10: a tie goes to the earlier sentence
                (18, 24, "B"),  # s2 3/10, s3 2/18 -> s2
                (30, 42, "C"),  # runs past s3 into the blanks after it: s3 only
                (2, 5, "D"),  # inside s1: no orphan
            ],
            {"t": [(0, 45)]},
        ),
        sentences,
    )
    assert got == {"s1": {"A", "D"}, "s2": {"B"}, "s3": {"C"}}


def test_sentence_projection_threshold_parameter():
    got = sp.to_sentences(GRID_CODING, SENTENCES, threshold=0.8, orphans=False)
    # A (5/10), D (5/10, 6/10) and F (7/10) fall below 0.8; B and G lie inside s2
    assert got == {"s1": frozenset(), "s2": frozenset({"B", "G"}), "s3": frozenset()}
    got = sp.to_sentences(GRID_CODING, SENTENCES, threshold=0.3, orphans=False)
    assert got["s1"] == {"A", "F"}  # F 3/10
    # coverage alone: B and G (inside s2, 2/10 and 1/10) no longer count
    got = sp.to_sentences(GRID_CODING, SENTENCES, inside=False, orphans=False)
    assert got["s2"] == {"D", "F"}
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            sp.to_sentences(GRID_CODING, SENTENCES, threshold=bad)


def test_sentence_projection_counts_every_character_of_the_sentence():
    # "ab cd" (5 characters, one blank): a span over "ab " is 3 of 5 -> carries;
    # over "ab" is 2 of 5 -> does not (blanks count on both sides of the ratio)
    s = [unit("s", 0, 5)]
    three = coding("a", [(0, 3, "X")], {"t": [(0, 5)]})
    two = coding("a", [(0, 2, "X"), (3, 5, "Y")], {"t": [(0, 5)]})
    assert sp.to_sentences(three, s) == {"s": frozenset({"X"})}
    assert sp.to_sentences(two, s) == {"s": frozenset({"X", "Y"})}  # both lie inside s
    # "ab cd" then "efghi": a span over "cd" and "ef" covers 2 of the first sentence's 5
    # characters (it would be 2 of 4 = half if the blank did not count): no code by
    # coverage, so the straddling stretch goes to the larger overlap (a tie: the first)
    longer = [unit("s", 0, 5), unit("n", 5, 10)]
    crossing = coding("a", [(3, 7, "Z")], {"t": [(0, 10)]})
    got = sp.to_sentences(crossing, longer, orphans=False)
    assert got == {"s": frozenset(), "n": frozenset()}
    assert sp.to_sentences(crossing, longer) == {"s": {"Z"}, "n": frozenset()}


def test_projection_does_not_depend_on_how_spans_are_cut():
    whole = coding("a", [(7, 13, "F")], {"t": [(0, 30)]})
    cut = coding("a", [(7, 10, "F"), (10, 13, "F"), (9, 12, "F")], {"t": [(0, 15), (15, 30)]})
    assert sp.to_sentences(whole, SENTENCES) == sp.to_sentences(cut, SENTENCES)
    assert sp.to_turns(whole, SENTENCES) == sp.to_turns(cut, SENTENCES)


def test_units_partly_outside_the_scope_are_absent():
    c = coding("a", [(0, 10, "A")], {"t": [(0, 15)]})
    got = sp.to_sentences(c, SENTENCES)
    assert got == {"s1": frozenset({"A"})}  # s2 is half inside the scope: not judged


def test_turn_projection_any_overlap():
    turns = [unit("T0", 0, 15), unit("T1", 15, 30), unit("T2", 30, 40)]
    assert sp.to_turns(GRID_CODING, turns) == {
        "T0": frozenset({"A", "B", "C", "F", "G"}),  # F [7,13); G [14,15) ends at T1
        "T1": frozenset({"D", "F"}),  # D [15,26), F [16,23)
    }  # T2 is outside the scope


def test_turn_units_from_a_transcript():
    text = "Q: hi\nA: yes"
    t = Transcript(
        id="tx",
        name="x",
        source_path="x.txt",
        content_hash="h",
        format="text",
        text=text,
        turns=[
            Turn(index=0, speaker="Q", text="hi", char_start=3, char_end=5),
            Turn(index=1, speaker="A", text="yes", char_start=9, char_end=12),
        ],
    )
    assert sp.turn_units(t) == [sp.Unit("tx#turn-0", "tx", 3, 5), sp.Unit("tx#turn-1", "tx", 9, 12)]
    assert sp.turn_units(t, indices=[1]) == [sp.Unit("tx#turn-1", "tx", 9, 12)]


# --------------------------------------------------------------------------- span agreement

REFERENCE = coding(
    "human",
    [(0, 10, "X"), (20, 30, "X"), (50, 70, "X"), (40, 45, "Y")],
    {"t": [(0, 100)]},
)
OTHER = coding("model", [(5, 25, "X"), (52, 58, "X"), (30, 35, "Z")], {"t": [(0, 60)]})


def test_span_agreement_per_code_by_hand():
    r = sp.span_agreement(REFERENCE, OTHER, n_boot=0)
    assert r.transcripts == ["t"] and r.scope_chars == 60  # both scopes: [0,60)
    assert [c.code for c in r.codes] == ["X", "Y", "Z"]
    x = r.code("X")
    # reference X inside [0,60): [0,10) [20,30) [50,60) = 30; model: [5,25) [52,58) = 26;
    # both: [5,10) [20,25) [52,58) = 16
    assert (x.chars_reference, x.chars_other, x.chars_both) == (30, 26, 16)
    assert x.metrics["char_precision"].value == pytest.approx(16 / 26)
    assert x.metrics["char_recall"].value == pytest.approx(16 / 30)
    assert x.metrics["char_f1"].value == pytest.approx(32 / 56)
    # highlights, share 0.5: [0,10) overlaps [5,25) by 5 of 10 -> found; [20,30) by 5 of
    # 10 -> found; [50,70) is 10 long inside the scope, [52,58) covers 6 -> found.
    # model [5,25) (20 long) overlaps two reference spans by 5 each, neither by 10 ->
    # not matched; [52,58) lies inside [50,70) -> matched.
    assert (x.spans_reference, x.spans_found, x.spans_other, x.spans_matched) == (3, 3, 2, 1)
    assert x.metrics["highlight_recall"].value == 1.0
    assert x.metrics["highlight_precision"].value == 0.5
    assert x.metrics["highlight_f1"].value == pytest.approx(2 / 3)
    y, z = r.code("Y"), r.code("Z")
    assert y.metrics["char_precision"].value is None  # the model never applied Y
    assert "coder B never applied" in y.metrics["char_precision"].note
    assert y.metrics["char_recall"].value == 0.0 and y.metrics["char_f1"].value == 0.0
    assert y.metrics["highlight_f1"].value == 0.0  # a reference span, nothing found
    assert z.metrics["char_recall"].value is None and z.metrics["char_precision"].value == 0.0
    assert z.metrics["highlight_precision"].value == 0.0 and z.metrics["highlight_f1"].value == 0.0


def test_span_agreement_micro_and_macro_by_hand():
    o = sp.span_agreement(REFERENCE, OTHER, n_boot=0).overall
    # pooled: reference 30 + 5 = 35, model 26 + 5 = 31, both 16
    assert o["micro_char_precision"].value == pytest.approx(16 / 31)
    assert o["micro_char_recall"].value == pytest.approx(16 / 35)
    assert o["micro_char_f1"].value == pytest.approx(32 / 66)
    # highlights: reference 3 + 1 spans, 3 found; model 2 + 1 spans, 1 matched
    assert o["micro_highlight_recall"].value == pytest.approx(3 / 4)
    assert o["micro_highlight_precision"].value == pytest.approx(1 / 3)
    assert o["micro_highlight_f1"].value == pytest.approx(2 * (1 / 3) * (3 / 4) / (1 / 3 + 3 / 4))
    # macro: mean of the defined per-code figures
    assert o["macro_char_precision"].value == pytest.approx((16 / 26 + 0) / 2)  # X, Z
    assert o["macro_char_recall"].value == pytest.approx((16 / 30 + 0) / 2)  # X, Y
    assert o["macro_char_f1"].value == pytest.approx((32 / 56 + 0 + 0) / 3)
    assert o["macro_highlight_f1"].value == pytest.approx((2 / 3) / 3)


def test_min_share_decides_what_counts_as_found():
    r = sp.span_agreement(REFERENCE, OTHER, n_boot=0, min_share=0.6).code("X")
    # 5 of 10 < 6 for the first two reference spans; [50,70): 6 of 10 -> found
    assert (r.spans_found, r.spans_matched) == (1, 1)
    r = sp.span_agreement(REFERENCE, OTHER, n_boot=0, min_share=0.25).code("X")
    # [5,25) now needs 5 of its 20 characters: [0,10) gives 5 -> matched
    assert (r.spans_found, r.spans_matched) == (3, 2)
    with pytest.raises(ValueError, match="min_share"):
        sp.span_agreement(REFERENCE, OTHER, min_share=0)


def test_span_agreement_only_counts_text_both_coders_answered():
    # the model answered nothing past 60: the reference's X on [60,70) and Y's span at
    # [80,90) cannot count against it
    ref = coding("h", [(50, 70, "X"), (80, 90, "Y")], {"t": [(0, 100)]})
    model = coding("m", [(50, 60, "X")], {"t": [(0, 60)]})
    r = sp.span_agreement(ref, model, n_boot=0)
    assert [c.code for c in r.codes] == ["X"]
    assert r.overall["micro_char_recall"].value == 1.0
    assert r.overall["micro_highlight_recall"].value == 1.0
    # the same spans with the model answering everything: half of X, none of Y
    full = coding("m", [(50, 60, "X")], {"t": [(0, 100)]})
    r = sp.span_agreement(ref, full, n_boot=0)
    assert r.overall["micro_char_recall"].value == pytest.approx(10 / 30)
    assert r.code("Y").metrics["char_recall"].value == 0.0


def test_listed_codes_nobody_used_are_undefined_not_one():
    r = sp.span_agreement(REFERENCE, OTHER, codes=["W"], n_boot=0)
    assert [c.code for c in r.codes] == ["W", "X", "Y", "Z"]
    w = r.code("W")
    for m in sp.SPAN_METRICS:
        assert w.metrics[m].value is None and w.metrics[m].note == ag.NEVER_USED


def test_span_agreement_does_not_depend_on_how_spans_are_cut():
    cut = coding(
        "model",
        [(5, 15, "X"), (15, 25, "X"), (52, 55, "X"), (54, 58, "X"), (30, 35, "Z")],
        {"t": [(0, 30), (30, 60)]},
    )
    a = sp.span_agreement(REFERENCE, OTHER, n_boot=0).to_dict()
    b = sp.span_agreement(REFERENCE, cut, n_boot=0).to_dict()
    assert a == b


def test_bootstrap_resamples_transcripts_seeded():
    # t1: perfect agreement; t2: the model's X lies beside the reference's (F1 0).
    ref = coding("h", [("t1", 0, 10, "X"), ("t2", 0, 10, "X")], {"t1": [(0, 20)], "t2": [(0, 20)]})
    model = coding(
        "m", [("t1", 0, 10, "X"), ("t2", 10, 20, "X")], {"t1": [(0, 20)], "t2": [(0, 20)]}
    )
    r = sp.span_agreement(ref, model, n_boot=400, seed=3)
    f1 = r.overall["micro_char_f1"]
    # point: 10 of 20 + 20 -> 0.5; resamples {t1,t1} -> 1, {t2,t2} -> 0, mixed -> 0.5,
    # each pure resample has probability 1/4, so the 95% interval is [0, 1]
    assert (f1.value, f1.low, f1.high) == (0.5, 0.0, 1.0)
    assert sp.span_agreement(ref, model, n_boot=400, seed=3).to_dict() == r.to_dict()
    # one cluster for both transcripts: every resample is the whole data
    one = sp.span_agreement(ref, model, n_boot=50, clusters={"t1": "P", "t2": "P"})
    assert (one.overall["micro_char_f1"].low, one.overall["micro_char_f1"].high) == (0.5, 0.5)
    assert one.code("X").metrics["highlight_recall"].low == 0.5


def test_no_shared_scope_gives_undefined_figures():
    a = coding("a", [(0, 5, "X")], {"t": [(0, 10)]})
    b = coding("b", [(20, 25, "X")], {"t": [(20, 30)]})
    r = sp.span_agreement(a, b, n_boot=100)
    assert r.transcripts == [] and r.codes == [] and r.n_boot == 0
    assert r.overall["micro_char_f1"].value is None


# --------------------------------------------------------------------------- coverage


def test_coverage_characters_and_grid_units():
    ref = coding("h", [], {"t": [(0, 100)]})
    other = coding("m", [], {"t": [(0, 60)], "u": [(0, 10)]})
    units = [unit("s1", 0, 10), unit("s2", 55, 65), unit("s3", 70, 80), unit("v", 0, 5, "u")]
    c = sp.coverage(ref, other, units)
    # 60 of the reference's 100 characters; of its 3 units (v is not in its scope),
    # only s1 lies wholly inside the model's scope
    assert (c.reference_chars, c.answered_chars, c.char_share) == (100, 60, 0.6)
    assert (c.reference_units, c.answered_units, c.unit_share) == (3, 1, pytest.approx(1 / 3))
    assert sp.coverage(ref, other).unit_share is None
    assert sp.coverage(coding("h", [], {}), other).char_share is None


# --------------------------------------------------------------------------- three levels


def test_agreement_at_levels_puts_the_three_side_by_side():
    turns = [unit("T0", 0, 30), unit("T1", 30, 60)]
    sentences = [unit(f"s{i}", 10 * i, 10 * i + 10) for i in range(6)]
    r = sp.agreement_at_levels(REFERENCE, OTHER, sentences=sentences, turns=turns, n_boot=0)
    assert r.span.to_dict() == sp.span_agreement(REFERENCE, OTHER, n_boot=0).to_dict()
    # sentences: reference X s0 s2 s5, Y s4; model X s0 (5/10) s1 (10/10) s2 (5/10) s5
    # (6/10), Z s3 (5/10). Sentence s5 = [50,60) is inside both scopes.
    ref_s = sp.to_sentences(REFERENCE, sentences)
    model_s = sp.to_sentences(OTHER, sentences)
    assert ref_s["s5"] == {"X"} and model_s["s1"] == {"X"} and model_s["s3"] == {"Z"}
    assert r.sentence.n_passages == 6
    x = r.sentence.code("X")
    assert (x.positives_a, x.positives_b, x.both) == (3, 4, 3)
    # turns: reference X T0 T1, Y T1; model X T0 T1, Z T1
    assert r.turn.code("X").both == 2 and r.turn.code("Y").positives_b == 0
    assert r.coverage.unit_share == 1.0  # all six sentences lie in [0,60)
