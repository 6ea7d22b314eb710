"""Validation of an answer for one unit: quotes placed as spans, codes checked (pure)."""

from __future__ import annotations

import math

from qualflow.validate import RawCode, check_answer, check_code, locate, normalize, place
from tests.llm_helpers import CODEBOOK, chunk_request

CHUNK = chunk_request(
    [
        ("Interviewer", "Could you read the ‘Home’ tab?", False),
        ("P3", "Read the ‘Home’ tab… okay. It is a café — naïve, I guess.", True),
        ("P3", "Well,\n  we   check\tMMLU every day.  And “HELM” too.", True),
    ]
)
TEXT_START = CHUNK.unit.char_start


def raw(code="01.use.daily", quotes=("check MMLU",), confidence=0.5, rationale="why"):
    return RawCode(code=code, quotes=list(quotes), rationale=rationale, confidence=confidence)


def text_of(start: int, end: int) -> str:
    return CHUNK.unit.text[start - TEXT_START : end - TEXT_START]


def test_locate_exact_then_tolerant_offsets_point_into_the_original():
    passage = "Well,\n  we   check\tMMLU every day.  And “HELM” too."
    found = locate("we check MMLU every\n day", passage)
    assert found.located == "exact" and passage[found.start : found.end] == (
        "we   check\tMMLU every day"
    )
    found = locate('"check MMLU"', passage)  # outer quotes the model added
    assert passage[found.start : found.end] == "check\tMMLU"
    found = locate('and "HELM" too', passage)  # straight for curly quotes, case
    assert found.located == "tolerant" and passage[found.start : found.end] == "And “HELM” too"
    assert locate("check MMLU weekly", passage) is None
    assert locate("", passage) is None and locate('""', passage) is None


def test_normalize_maps_every_character_back():
    text = "a — b…  ‘c’"
    norm, index = normalize(text, tolerant=True)
    assert norm == "a-b... 'c'"
    assert [text[i] for i in index] == ["a", "—", "b", "…", "…", "…", " ", "‘", "c", "’"]


def test_curly_quotes_ellipsis_and_dashes_land_exactly():
    placed = place("Read the 'Home' tab... okay.", CHUNK)
    assert placed.located == "tolerant"
    assert text_of(placed.start, placed.end) == "Read the ‘Home’ tab… okay."
    placed = place("It is a cafe", CHUNK)  # an accent dropped is not tolerated
    assert isinstance(placed, str) and "not a verbatim quote" in placed
    placed = place("a café - naïve", CHUNK)
    assert text_of(placed.start, placed.end) == "a café — naïve"


def test_quote_only_in_a_context_turn_or_across_turns_is_invalid_with_its_reason():
    why = place("Could you read the ‘Home’ tab?", CHUNK)
    assert isinstance(why, str) and "context turn (Interviewer)" in why
    why = place("I guess. Well, we check", CHUNK)
    assert isinstance(why, str) and "runs across two turns" in why
    why = place("I never said this", CHUNK)
    assert isinstance(why, str) and "not a verbatim quote" in why


def test_quote_in_both_a_context_and_a_coded_turn_lands_in_the_coded_one():
    placed = place("read the ‘Home’ tab", CHUNK)
    assert placed.start > CHUNK.unit.pieces[1].char_start - 1


def test_check_code_reports_every_problem():
    out = check_code(
        raw(code="nope", quotes=["made up"], confidence=-0.2, rationale=""),
        CHUNK,
        CODEBOOK,
        set(),
    )
    [p] = out
    assert not p.valid and p.confidence == 0.0 and p.start is None
    for part in ("'nope' does not exist", "rationale", "not a verbatim quote", "-0.2, outside"):
        assert part in p.invalid_reason
    [nan] = check_code(raw(confidence=math.nan), CHUNK, CODEBOOK, {"01.use.daily"})
    assert not nan.valid and "not a number" in nan.invalid_reason
    [none] = check_code(raw(quotes=[]), CHUNK, CODEBOOK, {"01.use.daily"})
    assert not none.valid and "has no quote" in none.invalid_reason


def test_several_quotes_become_several_spans_and_identical_quotes_two_occurrences():
    chunk = chunk_request([("P1", "It crashed. It crashed again.", True)])
    valid, invalid, verdict = check_answer(
        [raw(code="01.use.rarely", quotes=["It crashed", "It crashed"])], chunk, CODEBOOK, set()
    )
    assert verdict is None and not invalid
    assert [(p.start, p.end) for p in valid] == [(100, 110), (112, 122)]


def test_check_answer_flags_repeats_and_keeps_valid_ones():
    valid, invalid, verdict = check_answer(
        [
            raw(),
            raw(quotes=["check\tMMLU"]),  # the same span again
            raw(code="01.use.rarely", quotes=["Well,"]),
        ],
        CHUNK,
        CODEBOOK,
        {"01.use.daily"},
    )
    assert verdict is None
    assert [p.code for p in valid] == ["01.use.daily", "01.use.rarely"]
    assert valid[1].in_candidates is False and valid[0].in_candidates is True
    assert [p.invalid_reason for p in invalid] == ["'01.use.daily' repeated on one span"]


def test_an_answer_stacking_most_of_a_large_codebook_on_one_stretch_needs_a_human():
    from qualflow.models import Code, Codebook

    book = Codebook(name="big", codes=[Code(title=f"c{i:02d}") for i in range(20)])
    chunk = chunk_request([("P1", "Tag everything. All codes apply here.", True)])
    raws = [raw(code=c.title, quotes=["Tag everything."]) for c in book.codes[:11]]
    valid, _, verdict = check_answer(raws, chunk, book, set(), max_code_share=0.5)
    assert len(valid) == 11 and "stacks 11 of the codebook's 20 codes" in verdict
    _, _, ok = check_answer(raws[:9], chunk, book, set(), max_code_share=0.5)
    assert ok is None


def test_many_codes_in_different_places_of_a_long_chunk_are_plausible():
    from qualflow.models import Code, Codebook

    book = Codebook(name="big", codes=[Code(title=f"c{i:02d}") for i in range(20)])
    words = [f"Sentence {i} is about topic {i}." for i in range(12)]
    chunk = chunk_request([("P1", " ".join(words), True)])
    raws = [raw(code=book.codes[i].title, quotes=[w]) for i, w in enumerate(words)]
    valid, invalid, verdict = check_answer(raws, chunk, book, set(), max_code_share=0.5)
    assert len(valid) == 12 and not invalid and verdict is None


def test_oversized_fields_are_invalid():
    [p] = check_code(raw(rationale="x" * 5000), CHUNK, CODEBOOK, set())
    assert not p.valid and "5000 characters" in p.invalid_reason and len(p.rationale) == 2000
    [q] = check_code(raw(quotes=["y" * 6000]), CHUNK, CODEBOOK, set())
    assert not q.valid and "6000 characters" in q.invalid_reason


def test_an_exact_match_in_a_later_turn_wins_over_a_tolerant_one_in_an_earlier_turn():
    chunk = chunk_request([("P1", "yes, I think so.", True), ("P1", "Yes", True)])
    placed = place("Yes", chunk)
    assert placed.located == "exact" and placed.start == chunk.unit.pieces[1].char_start


def test_identical_quotes_in_two_turns_land_on_both_and_a_true_repeat_is_no_error():
    from qualflow.validate import must_reask

    chunk = chunk_request([("P1", "It is slow.", True), ("P1", "Fine. It is slow.", True)])
    valid, invalid, _ = check_answer(
        [raw(quotes=["It is slow."]), raw(quotes=["It is slow."]), raw(quotes=["It is slow."])],
        chunk,
        CODEBOOK,
        set(),
    )
    starts = [p.start for p in valid]
    assert starts == [chunk.unit.pieces[0].char_start, chunk.unit.pieces[1].char_start + 6]
    [repeat] = invalid  # the third has nowhere left to go: recorded, not worth a re-ask
    assert repeat.invalid_reason.endswith("repeated on one span") and not must_reask(repeat)
